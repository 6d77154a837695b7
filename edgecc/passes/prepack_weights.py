"""Rewrite weights into the packed layouts tuned kernels asked for, at compile time."""

from __future__ import annotations

NAME = "prepack-weights"
OPTIONAL = True  # an optimization: a model compiles without it
DESCRIPTION = ("Split the weight layout rewrites out of tuned kernels and fold them into the "
               "baked-in weights (no layout work left at run time, no packing code shipped).")


def run(mod, *, target):
    from tvm import relax

    for p in (relax.transform.SplitLayoutRewritePreproc(), relax.transform.LiftTransformParams(),
              relax.transform.FoldConstant(),
              # kernels take the folded constants directly, so the tuples that carried them
              # (a make_tuple, tuple_getitems and a kill per kernel at run time) are dead
              relax.transform.CanonicalizeBindings(),
              # ... and so are the packing kernels, which ran at compile time
              relax.transform.DeadCodeElimination()):
        mod = p(mod)
    return mod
