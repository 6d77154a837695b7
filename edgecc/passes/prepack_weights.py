"""Rewrite weights into the packed layouts tuned kernels asked for, at compile time."""

from __future__ import annotations

NAME = "prepack-weights"
DESCRIPTION = ("Split the weight layout rewrites out of tuned kernels and fold them into the "
               "baked-in weights (no layout work left at run time).")


def run(mod, *, target):
    from tvm import relax

    for p in (relax.transform.SplitLayoutRewritePreproc(), relax.transform.LiftTransformParams(),
              relax.transform.FoldConstant()):
        mod = p(mod)
    return mod
