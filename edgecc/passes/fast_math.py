"""float32 exp, erf, tanh, sigmoid and softmax through TVM's fast approximations.

TVM lowers ``exp``, ``erf`` and ``tanh`` (and ``sigmoid`` and ``softmax``, which legalize to
``exp``) to one libm call per element on CPUs: LLVM cannot vectorize them. On ViT-tiny at 224
the GELU's erf made a 58 MFLOP matmul kernel take 5 ms, and the attention softmaxes' exps
another few ms a run. TVM's ``fast_exp`` / ``fast_erf`` / ``fast_tanh`` (``topi``) are
polynomial approximations built of vector arithmetic: measured here against float64 references,
relative error at most 4.1e-6 (exp over [-80, 80]), 4.0e-7 (erf) and 3.8e-7 (tanh); ONNX
Runtime's CPU kernels approximate these the same way. Inputs are clamped (exp to about
[-88.4, 88.4]), so exp of a larger input gives about 2.4e38, not infinity.

Sigmoid becomes ``1 / (1 + exp(-x))`` and softmax ``exp(x - max) / sum(exp(x - max))`` in
Relax ops before ``FastMathTransform`` swaps every float32 exp, erf and tanh for its fast form.
Other dtypes are left as they are.
"""

from __future__ import annotations

from .rewrite import each_function

NAME = "fast-math"
OPTIONAL = True  # an optimization: a model compiles without it
DESCRIPTION = ("float32 exp, erf, tanh, sigmoid and softmax through TVM's vectorizable "
               "polynomial approximations (relative error below 5e-6) instead of a libm call "
               "per element.")


def run(mod, *, target):
    from tvm import relax

    return relax.transform.FastMathTransform()(exp_forms(mod))


def exp_forms(mod):
    """Rewrite float32 ``R.sigmoid`` and ``R.nn.softmax`` into Relax ops around ``R.exp``."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    sigmoid = tvm.ir.Op.get("relax.sigmoid")
    softmax = tvm.ir.Op.get("relax.nn.softmax")

    def float32(expr) -> bool:
        ty = expr.ty
        return isinstance(ty, relax.TensorType) and str(ty.dtype) == "float32"

    @mutator
    class Rewriter(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op.same_as(sigmoid) and float32(call.args[0]):
                return _sigmoid(call.args[0])
            if call.op.same_as(softmax) and float32(call.args[0]):
                return _softmax(self.builder_, call.args[0], int(call.attrs.axis))
            return call

    return each_function(mod, Rewriter(mod))


def _sigmoid(x):
    from tvm import relax

    one = relax.const(1.0, "float32")
    return relax.op.divide(one, relax.op.add(one, relax.op.exp(relax.op.negative(x))))


def _softmax(builder, x, axis: int):
    from tvm import relax

    op = relax.op
    # bound to variables: each intermediate is used twice or feeds a reduction
    shifted = builder.emit(op.subtract(x, op.max(x, axis=[axis], keepdims=True)))
    e = builder.emit(op.exp(shifted))
    return op.divide(e, op.sum(e, axis=[axis], keepdims=True))
