"""Mark weight buffers of every kernel as layout-free, so a tuned schedule may pre-pack them."""

from __future__ import annotations

NAME = "layout-free"
DESCRIPTION = ("Mark weight (constant) buffers as layout-free so tuned schedules may choose a "
               "packed weight layout; the tuner extracts its tasks right after this pass.")


def run(mod, *, target):
    from tvm import relax

    return relax.transform.AttachAttrLayoutFreeBuffers()(mod)
