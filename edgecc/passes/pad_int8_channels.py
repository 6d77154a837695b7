"""Pad the output channels of channels-last 8-bit x int8 convolutions (and the columns of
8-bit x int8 matmuls) to the dot-product instruction's width (16 on x86 VNNI, 4 on ARM sdot),
so they can be tensorized; the extra channels (zero weights) are sliced off right after.

MobileNet-style models have 24, 40 or 120 channels; without the padding those convs fall back
to the plain int8 rule (int32 lanes, no dot products). Runs after layout conversion, where the
slice is on the innermost (channel) axis and no transposes have to follow it.
"""

from __future__ import annotations

import numpy as np

NAME = "pad-int8-channels"
OPTIONAL = True  # an optimization: a model compiles without it
DESCRIPTION = ("Pad the output channels of NHWC 8-bit x int8 convs to a multiple of the "
               "target's dot-product width (zero weights, sliced off after the conv).")


def run(mod, *, target):
    from tvm import relax
    from tvm.ir.expr import GenericConst
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    from ..schedules.intrinsics import dot_product

    dot = dot_product(target)
    if dot is None:
        return mod
    x, w = wildcard(), is_const()
    conv = is_op("relax.nn.conv2d")(x, w)
    mx, mw = wildcard(), is_const()
    wt = is_op("relax.permute_dims")(mw)
    matmul = is_op("relax.matmul")(mx, mw | wt)

    def rewrite(expr, m):
        a = m[conv].attrs
        weight = m[w]
        if (a["data_layout"] != "NHWC" or a["kernel_layout"] != "OHWI"
                or str(a["out_dtype"]) != "int32" or int(a["groups"]) != 1
                or str(m[x].ty.dtype) != dot.activations
                or not isinstance(weight, GenericConst)):
            return expr
        w_q = weight.value.numpy()
        channels = w_q.shape[0]
        more = (-channels) % dot.lanes
        if not more:
            return expr
        padded = relax.const(np.pad(w_q, ((0, more), (0, 0), (0, 0), (0, 0))), "int8")
        acc = relax.op.nn.conv2d(m[x], padded, strides=a["strides"], padding=a["padding"],
                                 dilation=a["dilation"], groups=1, data_layout="NHWC",
                                 kernel_layout="OHWI", out_layout="NHWC", out_dtype="int32")
        return relax.op.strided_slice(acc, [3], [0], [channels])

    def rewrite_matmul(expr, m):
        """x[..., K] @ W[K, N] (or permute_dims(W[N, K])): N padded, the extra columns sliced
        off."""
        a = m[matmul].attrs
        weight = m[mw]
        if (str(a["out_dtype"]) != "int32" or str(m[mx].ty.dtype) != dot.activations
                or not isinstance(weight, GenericConst) or len(weight.ty.shape) != 2):
            return expr
        w_q = weight.value.numpy()
        transposed = wt in m
        columns = w_q.shape[0] if transposed else w_q.shape[1]
        more = (-columns) % dot.lanes
        if not more:
            return expr
        if transposed:  # weights as stored: (N, K)
            rhs = relax.op.permute_dims(relax.const(np.pad(w_q, ((0, more), (0, 0))), "int8"),
                                        m[wt].attrs["axes"])
        else:
            rhs = relax.const(np.pad(w_q, ((0, 0), (0, more))), "int8")
        acc = relax.op.matmul(m[mx], rhs, out_dtype="int32")
        last = len(expr.ty.shape) - 1
        return relax.op.strided_slice(acc, [last], [0], [columns])

    out = mod.clone()
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            out[gv] = rewrite_call(matmul, rewrite_matmul, rewrite_call(conv, rewrite, func))
    return out
