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
    from tvm import tirx

    from ..rule_tiling import default_schedule, is_contraction
    from .fallback import report
    from .transfer_tuning import is_scheduled

    out = mod.clone()
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        try:
            scheduled = default_schedule(func, target) if is_contraction(func) else None
        except Exception as e:  # noqa: BLE001  (this kernel keeps the default schedule)
            report(f"{NAME}: kernel '{gv.name_hint}' left to the default schedule ({e!r:.120})")
            continue
        if scheduled is not None:
            out[gv] = scheduled.with_attr("tirx.is_scheduled", True).with_attr(RULE, True)
    return out
