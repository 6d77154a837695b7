"""Pad the output channels of channels-last float convolutions whose channel count splits into
no useful vector (ShuffleNetV2's 58 and 116, a detector head's 75) to a multiple of the
target's vector width; the extra channels (zero weights) are sliced off right after the conv.

The rule schedule vectorizes a channels-last conv over its output channels, in vectors that
divide the channel count: 58 channels leave 2-lane vectors and the conv ran at about 11
GFLOP/s on AVX-512. Padded to 64, it runs in full 16-lane vectors; the 10% more multiply-adds
and the slice (one copy of the output) cost less. Channel counts that already give at least
half a vector (24, 40, 232 on AVX-512) are left as they are.
"""

from __future__ import annotations

import numpy as np

NAME = "pad-conv-channels"
OPTIONAL = True  # an optimization: a model compiles without it
DESCRIPTION = ("Pad the output channels of NHWC float convs that give no useful vector (58, "
               "75, 116...) to a multiple of the vector width (zero weights, sliced off after "
               "the conv).")


def padding(channels: int, lanes: int) -> int:
    """How many channels to add to ``channels`` outputs for ``lanes``-wide vectors: none where
    the largest power-of-two divisor of ``channels`` is already half a vector or more (or the
    conv is narrower than one vector), else up to the next multiple of ``lanes``."""
    if channels < lanes or lanes < 4:
        return 0
    pow2 = channels & -channels  # the largest power of two dividing channels
    return 0 if pow2 * 2 >= lanes else (-channels) % lanes


def run(mod, *, target):
    from tvm import relax
    from tvm.ir.expr import GenericConst
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    from ..schedules.rule_tiling import vector_bits

    x, w = wildcard(), is_const()
    conv = is_op("relax.nn.conv2d")(x, w)

    def rewrite(expr, m):
        a = m[conv].attrs
        weight = m[w]
        dtype = str(m[x].ty.dtype)
        if (a["data_layout"] != "NHWC" or a["kernel_layout"] != "OHWI"
                or int(a["groups"]) != 1 or dtype not in ("float32", "float16")
                or str(a["out_dtype"]) not in ("", "None", "void", dtype)
                or not isinstance(weight, GenericConst)):
            return expr
        w_f = weight.value.numpy()
        channels = w_f.shape[0]
        more = padding(channels, vector_bits(target) // np.dtype(dtype).itemsize // 8)
        if not more:
            return expr
        padded = relax.const(np.pad(w_f, ((0, more), (0, 0), (0, 0), (0, 0))), dtype)
        out = relax.op.nn.conv2d(m[x], padded, strides=a["strides"], padding=a["padding"],
                                 dilation=a["dilation"], groups=1, data_layout="NHWC",
                                 kernel_layout="OHWI", out_layout="NHWC")
        return relax.op.strided_slice(out, [3], [0], [channels])

    out = mod.clone()
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            out[gv] = rewrite_call(conv, rewrite, func)
    return out
