"""Rewrite weights into the packed layouts tuned kernels asked for, at compile time."""

from __future__ import annotations

NAME = "prepack-weights"
DESCRIPTION = ("Split the weight layout rewrites out of tuned kernels and fold them into the "
               "baked-in weights (no layout work left at run time, no packing code shipped).")


def run(mod, *, target):
    from tvm import relax

    for p in (relax.transform.SplitLayoutRewritePreproc(), relax.transform.LiftTransformParams(),
              relax.transform.FoldConstant(),
              # the packing kernels ran at compile time: drop them from the library
              relax.transform.DeadCodeElimination(),
              # kernels now take the folded constants directly: the tuples that carried them
              # are dead (each would cost a make_tuple, tuple_getitems and a kill per kernel
              # at run time)
              relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination()):
        mod = p(mod)
    return mod
