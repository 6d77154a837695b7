"""Fold inference batch norms into the weights of the convolution before them.

conv2d(x, W) [+ b] -> batch_norm(gamma, beta, mean, var) becomes conv2d(x, W * s) + (b - mean) * s
+ beta with s = gamma / sqrt(var + eps), all constants, so no batch-norm arithmetic is left at
run time (DecomposeOpsForInference alone leaves four elementwise ops after every conv).
"""

from __future__ import annotations

NAME = "fold-batchnorm"
OPTIONAL = True  # an optimization: a model compiles without it
DESCRIPTION = ("Fold BatchNormalization into the preceding Conv's weights and bias (inference): "
               "no batch-norm arithmetic left at run time.")


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

    out = mod.clone()  # passes are pure: the caller's module is left as it was
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            out[gv] = rewrite_call(pattern, rewriter, func)
    return out
