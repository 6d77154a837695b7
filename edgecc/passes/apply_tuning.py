"""Replace kernels with their best tuned schedule from the current tuning database."""

from __future__ import annotations

NAME = "apply-tuning"
OPTIONAL = True  # an optimization: a model compiles without it
DESCRIPTION = ("Apply the best tuned schedule per kernel from the tuning logs in effect "
               "(tuning_logs/<target>/, --tuning-log); kernels without a record keep the default.")


def run(mod, *, target):
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    if ms.Database.current() is None:
        return mod
    return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
