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
    from ..schedules.rule_tiling import default_schedule, is_contraction
    from .fallback import try_kernel, unscheduled_kernels

    out = mod.clone()
    for gv, func in unscheduled_kernels(mod):
        scheduled = try_kernel(NAME, gv, lambda f=func: default_schedule(f, target)
                               if is_contraction(f) else None,
                               left="left to the default schedule")
        if scheduled is not None:
            out[gv] = scheduled.with_attr("tirx.is_scheduled", True).with_attr(RULE, True)
    return out
