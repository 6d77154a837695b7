"""Schedule the convolutions and matrix products that have no tuned record by a rule."""

from __future__ import annotations

NAME = "rule-schedule"
OPTIONAL = True  # an optimization: a model compiles without it
DESCRIPTION = ("Convolutions and matrix products without a tuned record get MetaSchedule's "
               "multi-level tiling sketch with its tiles, padding placement and unroll depth "
               "set by a rule (a register tile of output channels x rows, the reduction "
               "around it, outer loops parallel); nothing is measured.")

RULE = "edgecc.rule_tiled"  # PrimFunc attribute: scheduled by the rule


def run(mod, *, target):
    from .fallback import try_kernel, unscheduled_kernels

    out = mod.clone()
    for gv, func in unscheduled_kernels(mod):
        scheduled = try_kernel(NAME, gv, lambda f=func: _schedule(f, target),
                               left="left to the default schedule")
        if scheduled is not None:
            out[gv] = scheduled.with_attr("tirx.is_scheduled", True).with_attr(RULE, True)
    return out


def _schedule(func, target):
    """A conv or matmul with rows: the rule (tensorized where it can be); a batch-1 int8
    matmul: tensorized only (else dlight's GEMV rule takes it in cpu-schedule); else None."""
    from ..schedules.rule_tiling import is_contraction
    from ..schedules.rules import default_schedule, tensorized

    if is_contraction(func):
        return default_schedule(func, target)
    sch = tensorized(func, target)
    return None if sch is None else sch.mod["main"]
