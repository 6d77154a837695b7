"""Fuse producer/consumer ops into single kernels (FuseOps) and merge their TIR (FuseTIR)."""

from __future__ import annotations

NAME = "fuse"
DESCRIPTION = "Fuse producer/consumer ops into single kernels (FuseOps) and merge their TIR (FuseTIR)."


def run(mod, *, target):
    from tvm import relax

    mod = relax.transform.FuseOps()(mod)
    return relax.transform.FuseTIR()(mod)
