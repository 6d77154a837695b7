"""Canonicalize bindings: drop trivial rebinds and redundant match_cast."""

from __future__ import annotations

NAME = "canonicalize"
DESCRIPTION = "Canonicalize bindings: drop trivial rebinds and redundant match_cast."


def run(mod, *, target):
    from tvm import relax

    return relax.transform.CanonicalizeBindings()(mod)
