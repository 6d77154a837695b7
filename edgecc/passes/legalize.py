"""Lower every Relax op to a TIR PrimFunc (call_tir)."""

from __future__ import annotations

NAME = "legalize"
DESCRIPTION = "Lower every Relax op to a TIR PrimFunc (call_tir)."


def run(mod, *, target):
    from tvm import relax

    return relax.transform.LegalizeOps()(mod)
