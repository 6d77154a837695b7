"""The schedule a convolution or matrix product without a tuning record gets: tensorized with
the target's int8 dot-product instruction where it has one and the kernel multiplies the
activations it takes by int8 weights (:mod:`.rule_int8`), else tiled by the register-tile rule
(:mod:`.rule_tiling`)."""

from __future__ import annotations

from . import rule_int8, rule_tiling
from .intrinsics import dot_product
from .trace import anchor_block


def tensorized(func, target):
    """The Schedule of ``func`` with the target's int8 dot product, or None (no dot product,
    not an int8 contraction it takes, or no tensorized sketch fits)."""
    dot = dot_product(target)
    if dot is None or not rule_int8.is_int8_contraction(anchor_block(func), dot.activations):
        return None
    return rule_int8.tensorized_schedule(func, target, dot)


def rule_schedule(func, target):
    """The Schedule (its trace a tuning seed), or None when no rule applies."""
    sch = tensorized(func, target)
    return sch if sch is not None else rule_tiling.rule_schedule(func, target)


def default_schedule(func, target):
    """``func`` scheduled by :func:`rule_schedule`, or None."""
    sch = rule_schedule(func, target)
    return None if sch is None else sch.mod["main"]
