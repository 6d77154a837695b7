"""Plan static memory (reuse buffers across ops), lower allocations, free after last use."""

from __future__ import annotations

NAME = "plan-memory"
DESCRIPTION = "Plan static memory (reuse buffers across ops), lower allocations, free after last use."


def run(mod, *, target):
    from tvm import relax

    for p in (relax.transform.StaticPlanBlockMemory(), relax.transform.LowerAllocTensor(),
              relax.transform.KillAfterLastUse()):
        mod = p(mod)
    return mod
