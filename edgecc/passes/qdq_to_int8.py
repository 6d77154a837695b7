"""Turn QDQ (QuantizeLinear/DequantizeLinear) convolutions and matmuls into real int8 compute.

ONNX QDQ models express int8 as dequantize -> fp32 op -> quantize. This pass rewrites

    conv2d(dequantize(x_q, s_x, 0), dequantize(W_q, s_w, 0))            (same for matmul, with or
                                                                         without a transposed W)
into
    astype(conv2d(x_q, W_q, out_dtype="int32"), "float32") * (s_x * s_w)

i.e. int8 x int8 products with int32 accumulation, followed by the requantize chain (scale, bias,
activation, quantize to the next layer's int8), which fusion puts in the same kernel. Only
symmetric quantization (zero points 0) is rewritten, so zero padding stays exact; anything else
is left in fp32. It must run before constant folding, which would turn the int8 weights back
into fp32 constants.
"""

from __future__ import annotations

import numpy as np

NAME = "qdq-to-int8"
DESCRIPTION = ("Rewrite dequantize->conv2d/matmul over int8 tensors into int8 x int8 -> int32 "
               "conv2d/matmul plus a float rescale (QDQ models; symmetric zero points only).")

INT_INPUTS = ("int8", "uint8")


def _zero(c) -> bool:
    return not np.any(c.value.numpy())


def _per_channel_scale(sx, sw, out_rank: int, channel_axis: int):
    """s_x * s_w shaped to broadcast over the output (channel at ``channel_axis``)."""
    scale = (sx.value.numpy().astype(np.float32).reshape(()) *
             sw.value.numpy().astype(np.float32).reshape(-1))
    if scale.size == 1:
        return scale.reshape(())
    shape = [1] * out_rank
    shape[channel_axis] = scale.size
    return scale.reshape(shape)


def run(mod, *, target):
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    xq, wq = wildcard(), is_const()
    sx, zx, sw, zw = is_const(), is_const(), is_const(), is_const()
    dqx = is_op("relax.dequantize")(xq, sx, zx)
    dqw = is_op("relax.dequantize")(wq, sw, zw)
    conv = is_op("relax.nn.conv2d")(dqx, dqw)
    wt = is_op("relax.permute_dims")(dqw)
    mm = is_op("relax.matmul")(dqx, dqw | wt)

    def quantized_operands(m) -> bool:
        x_dtype = m[xq].ty.dtype if hasattr(m[xq].ty, "dtype") else None
        return (x_dtype in INT_INPUTS and m[wq].ty.dtype == "int8" and _zero(m[zx])
                and _zero(m[zw]) and m[sx].value.numpy().size == 1)

    def rewrite_conv(expr, m):
        a = m[conv].attrs
        if not quantized_operands(m) or a["data_layout"] != "NCHW" or a["kernel_layout"] != "OIHW":
            return expr
        acc = relax.op.nn.conv2d(m[xq], m[wq], strides=a["strides"], padding=a["padding"],
                                 dilation=a["dilation"], groups=a["groups"],
                                 data_layout="NCHW", kernel_layout="OIHW", out_dtype="int32")
        scale = _per_channel_scale(m[sx], m[sw], 4, 1)
        return relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale, "float32"))

    def rewrite_matmul(expr, m):
        if not quantized_operands(m) or len(m[wq].ty.shape) != 2:
            return expr
        axis = int(m[dqw].attrs["axis"])
        transposed = wt in m
        if np.asarray(m[sw].value.numpy()).size > 1 and axis != (0 if transposed else 1):
            return expr  # per-channel along the reduction axis cannot be factored out
        w = relax.op.permute_dims(m[wq], m[wt].attrs["axes"]) if transposed else m[wq]
        acc = relax.op.matmul(m[xq], w, out_dtype="int32")
        rank = len(expr.ty.shape)
        scale = _per_channel_scale(m[sx], m[sw], rank, rank - 1)
        return relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale, "float32"))

    out = mod.clone()  # passes are pure: the caller's module is left as it was
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            out[gv] = rewrite_call(mm, rewrite_matmul, rewrite_call(conv, rewrite_conv, func))
    return out


def int8_ops(mod) -> dict[str, int]:
    """Count conv2d/matmul calls by compute dtype: {"int8": n, "fp32": m} (for reports/tests)."""
    from tvm import relax

    counts = {"int8": 0, "fp32": 0}

    def visit(e):
        if isinstance(e, relax.Call) and hasattr(e.op, "name") and e.op.name in (
                "relax.nn.conv2d", "relax.matmul"):
            dtype = e.args[0].ty.dtype
            counts["int8" if dtype in INT_INPUTS else "fp32"] += 1

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts
