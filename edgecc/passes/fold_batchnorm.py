"""Fold inference batch norms into the weights of the convolution before them.

conv2d(x, W) [+ b] -> batch_norm(gamma, beta, mean, var) becomes conv2d(x, W * s) + (b - mean) * s
+ beta with s = gamma / sqrt(var + eps), all constants, so no batch-norm arithmetic is left at
run time (DecomposeOpsForInference alone leaves four elementwise ops after every conv).

A batch norm that follows no conv (DenseNet's and pre-activation ResNets' BN-ReLU before each
conv) becomes ``x * s + (beta - mean * s)``: one multiply-add that the ReLU after it fuses
with. TVM's own lowering computes a subtract, a divide, a multiply and an add, and returns a
tuple (the output and the running statistics) that keeps the ReLU in a kernel of its own.
"""

from __future__ import annotations

NAME = "fold-batchnorm"
OPTIONAL = True  # an optimization: a model compiles without it
DESCRIPTION = ("Fold BatchNormalization into the preceding Conv's weights and bias (inference): "
               "no batch-norm arithmetic left at run time; one after no conv becomes one "
               "multiply-add.")


def run(mod, *, target):
    from tvm import relax, tirx
    from tvm.relax.dpl import TupleGetItemPattern, is_const, is_op, rewrite_call, wildcard

    x, w, b = wildcard(), is_const(), is_const()
    gamma, beta, mean, var = is_const(), is_const(), is_const(), is_const()
    conv = is_op("relax.nn.conv2d")(x, w)
    conv_bias = is_op("relax.add")(conv, b)
    bn = is_op("relax.nn.batch_norm")(conv | conv_bias, gamma, beta, mean, var)
    pattern = TupleGetItemPattern(bn, 0)

    def rewriter(expr, m):
        conv_call = m[conv]
        attrs = conv_call.attrs
        if attrs["kernel_layout"] != "OIHW" or attrs["data_layout"] != "NCHW":
            return expr
        channels = m[gamma].ty.shape[0]
        eps = relax.prim_value(tirx.FloatImm("float32", m[bn].attrs["epsilon"]))
        scale = relax.op.divide(m[gamma], relax.op.sqrt(relax.op.add(m[var], eps)))
        shift = relax.op.subtract(m[beta], relax.op.multiply(m[mean], scale))
        if b in m:  # conv bias, shape (1, C, 1, 1): scaled too
            shift = relax.op.add(shift, relax.op.multiply(
                relax.op.reshape(m[b], (channels,)), scale))
        weight = relax.op.multiply(m[w], relax.op.reshape(scale, (channels, 1, 1, 1)))
        out = relax.Call(conv_call.op, (m[x], weight), attrs)
        return relax.op.add(out, relax.op.reshape(shift, (1, channels, 1, 1)))

    y = wildcard()
    alone = is_op("relax.nn.batch_norm")(y, gamma, beta, mean, var)
    alone_out = TupleGetItemPattern(alone, 0)

    def scale_shift(expr, m):
        """``batch_norm(y)[0]`` as ``y * s + (beta - mean * s)``, ``s`` and the shift shaped
        to broadcast along the norm's axis."""
        a = m[alone].attrs
        ty = m[y].ty
        if bool(a["training"]) or not isinstance(ty, relax.TensorType) or ty.ndim < 2:
            return expr
        axis = int(a["axis"]) % ty.ndim
        channels = m[gamma].ty.shape[0]
        eps = relax.prim_value(tirx.FloatImm("float32", a["epsilon"]))
        scale = relax.op.sqrt(relax.op.add(m[var], eps))
        scale = relax.op.divide(m[gamma], scale) if bool(a["scale"]) else \
            relax.op.divide(relax.const(1.0, str(ty.dtype)), scale)
        shift = relax.op.negative(relax.op.multiply(m[mean], scale))
        if bool(a["center"]):
            shift = relax.op.add(m[beta], shift)
        shape = [1] * ty.ndim
        shape[axis] = channels
        return relax.op.add(relax.op.multiply(m[y], relax.op.reshape(scale, shape)),
                            relax.op.reshape(shift, shape))

    out = mod.clone()  # passes are pure: the caller's module is left as it was
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            folded = rewrite_call(pattern, rewriter, func)
            out[gv] = rewrite_call(alone_out, scale_shift, folded)
    return out
