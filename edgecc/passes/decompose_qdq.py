"""Spell per-tensor quantize/dequantize as the elementwise ops they are, so layout conversion
can carry an int8 model to channels-last.

``relax.quantize`` and ``relax.dequantize`` have no layout rule: ``ConvertLayout`` would wrap
every requantization of an int8 model in a pair of transposes. With one scale and zero point
(activations are quantized per tensor) they are (as TVM legalizes them, but for a multiply by the reciprocal scale),

    quantize(x, s, z)   = astype(clip(round(x * (1 / s)) + z, qmin, qmax), int8|uint8)
    dequantize(q, s, z) = astype(astype(q, int32) - z, float32) * s

which layout conversion follows. Per-channel ones (weights) are left to constant folding.
"""

from __future__ import annotations

import numpy as np

from .rewrite import each_function

OPTIONAL = True  # an optimization: without it an int8 model stays NCHW
NAME = "decompose-qdq"
DESCRIPTION = ("Rewrite per-tensor quantize/dequantize into round/clip/astype elementwise ops "
               "(which layout conversion follows); per-channel ones are left as they are.")

_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
          "uint16": (0, 65535)}


def _scalar_const(e):
    from tvm.ir.expr import GenericConst  # a Relax constant in TVM 0.27

    if isinstance(e, GenericConst) and e.value.numpy().size == 1:
        return np.asarray(e.value.numpy()).reshape(-1)[0]
    return None


def run(mod, *, target):
    from tvm import relax

    @relax.expr_functor.mutator
    class Decompose(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            name = getattr(call.op, "name", "")
            if name not in ("relax.quantize", "relax.dequantize"):
                return call
            x, s, z = call.args
            scale, zero = _scalar_const(s), _scalar_const(z)
            if scale is None or zero is None or not np.isfinite(scale) or scale == 0:
                return call  # (a zero scale: left to the op's own lowering)
            if name == "relax.quantize":
                out = str(call.attrs.out_dtype)
                if out not in _RANGE or str(x.ty.dtype) != "float32":
                    return call
                lo, hi = _RANGE[out]
                # times the reciprocal: a vector divide costs ~10x a multiply, and the two
                # differ only where x / s is within an ulp of a rounding tie
                q = relax.op.multiply(x, relax.const(np.float32(1.0) / np.float32(scale),
                                                     "float32"))
                q = relax.op.add(relax.op.round(q), relax.const(np.float32(zero), "float32"))
                return relax.op.astype(relax.op.clip(q, float(lo), float(hi)), out)
            if str(call.attrs.out_dtype) != "float32" or str(x.ty.dtype) not in _RANGE:
                return call
            d = relax.op.subtract(relax.op.astype(x, "int32"), relax.const(int(zero), "int32"))
            return relax.op.multiply(relax.op.astype(d, "float32"),
                                     relax.const(np.float32(scale), "float32"))

    return each_function(mod, Decompose(mod))
