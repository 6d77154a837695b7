"""Annotate each PrimFunc's operator pattern (elementwise, injective, reduction, ...) for fusion."""

from __future__ import annotations

NAME = "annotate-patterns"
DESCRIPTION = "Annotate each PrimFunc's operator pattern (elementwise, injective, reduction, ...) for fusion."


def run(mod, *, target):
    from tvm import relax

    return relax.transform.AnnotateTIROpPattern()(mod)
