"""fp16 weights and fp16 multiplies with fp32 accumulation for every conv2d and matmul.

conv2d(x, W) becomes conv2d(astype(x, "float16"), W16, out_dtype="float32") with W16 an fp16
constant (half the bytes), and the same for matmul with a constant operand. Activations between
layers and elementwise ops stay fp32, so only the products are rounded. TVM's ToMixedPrecision
would also keep activations in fp16, but it refuses the TE-emitted call_tir that the ONNX importer
produces for Clip (ReLU6), so this rewrite is used instead: it works on every imported model.
"""

from __future__ import annotations

NAME = "to-fp16"
DESCRIPTION = ("fp16 weights (half the size) and fp16 x fp16 products with fp32 accumulation for "
               "conv2d/matmul; activations stay fp32.")


def run(mod, *, target):
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    x, w = wildcard(), is_const()
    conv = is_op("relax.nn.conv2d")(x, w)
    mm_rhs = is_op("relax.matmul")(x, w)
    mm_lhs = is_op("relax.matmul")(w, x)

    def half_const(c):
        return relax.const(c.value.numpy().astype("float16"), "float16")

    def half(e):
        return relax.op.astype(e, "float16")

    def fp32_only(m) -> bool:
        return m[x].ty.dtype == "float32" and m[w].ty.dtype == "float32"

    def rewrite_conv(expr, m):
        if not fp32_only(m):
            return expr
        a = m[conv].attrs
        return relax.op.nn.conv2d(half(m[x]), half_const(m[w]), strides=a["strides"],
                                  padding=a["padding"], dilation=a["dilation"], groups=a["groups"],
                                  data_layout=a["data_layout"], kernel_layout=a["kernel_layout"],
                                  out_layout=a["out_layout"], out_dtype="float32")

    def rewrite_mm(expr, m):
        if not fp32_only(m):
            return expr
        if mm_rhs in m:
            return relax.op.matmul(half(m[x]), half_const(m[w]), out_dtype="float32")
        return relax.op.matmul(half_const(m[w]), half(m[x]), out_dtype="float32")

    out = mod.clone()  # passes are pure: the caller's module is left as it was
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            func = rewrite_call(conv, rewrite_conv, func)
            out[gv] = rewrite_call(mm_rhs | mm_lhs, rewrite_mm, func)
    return out
