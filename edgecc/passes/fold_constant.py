"""Evaluate subgraphs whose inputs are all constants (weights) at compile time."""

from __future__ import annotations

NAME = "fold-constant"
OPTIONAL = True  # an optimization: a model compiles without it
DESCRIPTION = "Evaluate subgraphs whose inputs are all constants (weights) at compile time."


def run(mod, *, target):
    from tvm import relax

    return relax.transform.FoldConstant()(mod)
