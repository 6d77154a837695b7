"""Dispatch sampling and sort/scan ops to their target-specific kernels."""

from __future__ import annotations

NAME = "dispatch-library"
DESCRIPTION = "Dispatch sampling and sort/scan ops to their target-specific kernels."


def run(mod, *, target):
    from tvm import relax

    mod = relax.backend.DispatchSampling()(mod)
    return relax.backend.DispatchSortScan()(mod)
