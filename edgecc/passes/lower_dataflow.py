"""Leave dataflow form: rewrite reshapes, drop dataflow blocks and purity checks, lower call_tir."""

from __future__ import annotations

NAME = "lower-dataflow"
DESCRIPTION = "Leave dataflow form: rewrite reshapes, drop dataflow blocks and purity checks, lower call_tir."


def run(mod, *, target):
    from tvm import relax

    for p in (relax.transform.RewriteDataflowReshape(), relax.transform.ToNonDataflow(),
              relax.transform.RemovePurityChecking(), relax.transform.CallTIRRewrite()):
        mod = p(mod)
    return mod
