"""Turn QDQ (QuantizeLinear/DequantizeLinear) convolutions and matmuls into real int8 compute.

ONNX QDQ models express int8 as dequantize -> fp32 op -> quantize. This pass rewrites

    conv2d(dequantize(x_q, s_x, z_x), dequantize(W_q, s_w, 0))          (same for matmul, with or
                                                                         without a transposed W)
into
    astype(conv2d(x_q, W_q, out_dtype="int32") - z_x * sum(W_q), "float32") * (s_x * s_w)

i.e. 8-bit x int8 products with int32 accumulation, the activations' zero point folded into a
per-output-channel constant, followed by the requantize chain (scale, bias, activation,
quantize to the next layer's 8 bits), which fusion puts in the same kernel. Activations may be
int8 or uint8 with any zero point (ORT's S8S8 and U8S8 QDQ models); weights must be symmetric
int8 (zero point 0), per tensor or per output channel.

Zero padding stays exact: where the zero point is not 0 the input is padded with it explicitly
(``nn.pad``), so padded taps are real zeros after the zero point is taken off.

On a target with a dot-product instruction (:mod:`edgecc.schedules.intrinsics`) the activations
are shifted to the signedness it multiplies: int8 to uint8 for x86 VNNI (``x + 128``, zero
point + 128), uint8 to int8 for ARM sdot (``x - 128``); and a dense conv's input channels are
padded to a multiple of 4 (the instruction's reduction), with zero weights.

It must run before constant folding, which would turn the int8 weights back into fp32
constants.
"""

from __future__ import annotations

import numpy as np

OPTIONAL = True  # an optimization: without it the model runs in fp32
NAME = "qdq-to-int8"
DESCRIPTION = ("Rewrite dequantize->conv2d/matmul over 8-bit tensors into 8-bit x int8 -> int32 "
               "conv2d/matmul plus a float rescale (QDQ models; activation zero points folded "
               "into a per-channel constant, weights symmetric).")

INT_INPUTS = ("int8", "uint8")
SHIFT = 128  # int8 -> uint8


def _zero(c) -> bool:
    return not np.any(c.value.numpy())


def _scalar(c) -> int:
    return int(np.asarray(c.value.numpy()).reshape(-1)[0])


def _per_channel_scale(sx, sw, out_rank: int, channel_axis: int):
    """s_x * s_w shaped to broadcast over the output (channel at ``channel_axis``)."""
    scale = (sx.value.numpy().astype(np.float32).reshape(()) *
             sw.value.numpy().astype(np.float32).reshape(-1))
    if scale.size == 1:
        return scale.reshape(())
    shape = [1] * out_rank
    shape[channel_axis] = scale.size
    return scale.reshape(shape)


def _activations(x, zero_point: int, *, want: str | None):
    """(activations, zero point) as the kernel reads them: shifted to ``want`` (uint8 or int8)
    when it is another dtype. Where ``x`` is a per-tensor ``quantize`` (the pattern matcher
    hands over the bound value), it is quantized again straight to ``want`` with the zero
    point moved by the shift (the same values: clip(r + z, -128, 127) + 128 =
    clip(r + z + 128, 0, 255)), so the kernel that makes it does one conversion, not three."""
    from tvm import relax

    if want is None or str(x.ty.dtype) == want:
        return x, zero_point
    shift = SHIFT if want == "uint8" else -SHIFT
    q = x
    if (isinstance(q, relax.Call) and getattr(q.op, "name", "") == "relax.quantize"
            and q.args[2].value.numpy().size == 1 and _scalar(q.args[2]) == zero_point
            and q.args[1].value.numpy().size == 1):
        return relax.op.quantize(q.args[0], q.args[1], relax.const(zero_point + shift, want),
                                 axis=int(q.attrs.axis), out_dtype=want), zero_point + shift
    shifted = relax.op.add(relax.op.astype(x, "int32"), relax.const(shift, "int32"))
    return relax.op.astype(shifted, want), zero_point + shift


def run(mod, *, target):
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    from ..schedules.intrinsics import dot_product

    dot = dot_product(target)
    want = dot.activations if dot is not None else None
    xq, wq = wildcard(), is_const()
    sx, zx, sw, zw = is_const(), is_const(), is_const(), is_const()
    dqx = is_op("relax.dequantize")(xq, sx, zx)
    dqw = is_op("relax.dequantize")(wq, sw, zw)
    conv = is_op("relax.nn.conv2d")(dqx, dqw)
    wt = is_op("relax.permute_dims")(dqw)
    mm = is_op("relax.matmul")(dqx, dqw | wt)

    def quantized_operands(m) -> bool:
        x_dtype = m[xq].ty.dtype if hasattr(m[xq].ty, "dtype") else None
        return (x_dtype in INT_INPUTS and m[wq].ty.dtype == "int8" and _zero(m[zw])
                and m[sx].value.numpy().size == 1 and m[zx].value.numpy().size == 1)

    def rewrite_conv(expr, m):
        a = m[conv].attrs
        if not quantized_operands(m) or a["data_layout"] != "NCHW" or a["kernel_layout"] != "OIHW":
            return expr
        x, z = _activations(m[xq], _scalar(m[zx]), want=want)
        w_q = m[wq].value.numpy()
        padding = [int(p) for p in a["padding"]]  # top, left, bottom, right
        # a dot-product instruction sums 4 input channels: pad a dense conv's (an RGB input's
        # 3) to a multiple of 4 with zero weights
        extra = (-w_q.shape[1]) % dot.reduction if dot and int(a["groups"]) == 1 else 0
        weight = m[wq]
        if extra:
            w_q = np.pad(w_q, ((0, 0), (0, extra), (0, 0), (0, 0)))
            weight = relax.const(w_q, "int8")
        if (z and any(padding)) or extra:
            top, left, bottom, right = padding
            x = relax.op.nn.pad(x, [0, 0, 0, extra, top, bottom, left, right],
                                pad_value=float(z))
            padding = [0, 0, 0, 0]
        acc = relax.op.nn.conv2d(x, weight, strides=a["strides"], padding=padding,
                                 dilation=a["dilation"], groups=a["groups"],
                                 data_layout="NCHW", kernel_layout="OIHW", out_dtype="int32")
        if z:
            comp = (z * w_q.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32)
            comp = comp.reshape(1, -1, 1, 1)
            acc = relax.op.subtract(acc, relax.const(comp, "int32"))
        scale = _per_channel_scale(m[sx], m[sw], 4, 1)
        return relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale, "float32"))

    def rewrite_matmul(expr, m):
        if not quantized_operands(m) or len(m[wq].ty.shape) != 2:
            return expr
        axis = int(m[dqw].attrs["axis"])
        transposed = wt in m
        if np.asarray(m[sw].value.numpy()).size > 1 and axis != (0 if transposed else 1):
            return expr  # per-channel along the reduction axis cannot be factored out
        x, z = _activations(m[xq], _scalar(m[zx]), want=want)
        w = relax.op.permute_dims(m[wq], m[wt].attrs["axes"]) if transposed else m[wq]
        acc = relax.op.matmul(x, w, out_dtype="int32")
        if z:
            wv = m[wq].value.numpy().astype(np.int64)
            comp = (z * wv.sum(axis=1 if transposed else 0)).astype(np.int32)
            acc = relax.op.subtract(acc, relax.const(comp, "int32"))
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
