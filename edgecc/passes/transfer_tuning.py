"""Schedule kernels that have no tuning record with the record of a similar tuned kernel."""

from __future__ import annotations

NAME = "transfer-tuning"
OPTIONAL = True  # an optimization: a model compiles without it
DESCRIPTION = ("Kernels without a record of their own get the schedule tuned for the nearest "
               "kernel with the same anchor op (other shapes or epilogue), tile sizes refitted; "
               "donors are the tuning logs in effect.")

TRANSFERRED = "edgecc.transferred"  # PrimFunc attribute: the donor's anchor extents


def run(mod, *, target):
    from tvm import tirx

    from ..schedules.transfer import current_donors, transfer_func
    from .fallback import is_scheduled, try_kernel

    donors = current_donors()
    if not donors:
        return mod
    out = mod.clone()
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        found = try_kernel(NAME, gv, lambda f=func: transfer_func(f, donors, target),
                           left="left to the default schedule")
        if found is None:
            continue
        scheduled, donor = found
        scheduled = scheduled.with_attr("tirx.is_scheduled", True)
        scheduled = scheduled.with_attr(TRANSFERRED, "x".join(map(str, donor.extents)))
        out[gv] = scheduled
    return out
