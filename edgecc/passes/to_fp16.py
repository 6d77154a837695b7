"""Mixed precision: fp16 tensors and weights, fp32 accumulation (TVM's ToMixedPrecision).

Convolutions and matmuls take fp16 inputs and accumulate in fp32; elementwise ops follow their
inputs; the function's inputs and outputs keep their dtypes. Weights become fp16 constants after
the next constant folding, halving their size.
"""

from __future__ import annotations

NAME = "to-fp16"
DESCRIPTION = "Mixed precision: fp16 weights and activations, fp32 accumulation (ToMixedPrecision)."


def run(mod, *, target):
    from tvm import relax

    return relax.transform.ToMixedPrecision(out_dtype="float32")(mod)
