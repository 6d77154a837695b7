"""Schedule the convolutions and matrix products that have no tuned record by a rule."""

from __future__ import annotations

NAME = "rule-schedule"
DESCRIPTION = ("Convolutions and matrix products without a tuned record get MetaSchedule's "
               "multi-level tiling sketch with its tiles, padding placement and unroll depth "
               "set by a rule (a register tile of output channels x rows, the reduction "
               "around it, outer loops parallel); nothing is measured.")

RULE = "edgecc.rule_tiled"  # PrimFunc attribute: scheduled by the rule


def run(mod, *, target):
    from tvm import tirx

    from ..rule_tiling import default_schedule, is_contraction
    from .transfer_tuning import is_scheduled

    out = mod.clone()
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and not is_scheduled(func) and is_contraction(func):
            scheduled = default_schedule(func, target)
            if scheduled is not None:
                out[gv] = scheduled.with_attr("tirx.is_scheduled", True).with_attr(RULE, True)
    return out
