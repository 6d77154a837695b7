"""Convert conv2d to channels-last (NHWC activations, OHWI weights) for CPU targets.

ONNX's Clip (ReLU6) arrives from the importer as ``call_tir`` kernels (``topi.maximum`` /
``topi.minimum`` against a scalar), which layout conversion cannot see through: every ReLU6
would be wrapped in a transpose back to NCHW and one forward again. Those kernels are turned
back into ``R.maximum`` / ``R.minimum`` first, so the whole conv chain stays NHWC and the only
transposes left are at the model's edges (its input, and before a flatten).
"""

from __future__ import annotations

NAME = "convert-layout"
DESCRIPTION = ("Convert conv2d (and the elementwise ops and pools around it) to NHWC, so kernels "
               "vectorize over channels in both input and output; transposes only at the edges.")

DESIRED = {"relax.nn.conv2d": ["NHWC", "OHWI"]}


def _clamp_op(func, x_ty, c_ty):
    """``R.maximum`` or ``R.minimum`` if the PrimFunc ``func`` is exactly
    ``topi.maximum``/``topi.minimum`` of a tensor typed ``x_ty`` and a scalar, else None."""
    import tvm_ffi
    from tvm import relax, te, tirx, topi

    if c_ty.ndim != 0 or c_ty.dtype != x_ty.dtype or x_ty.shape is None:
        return None
    try:
        shape = [tirx.IntImm("int64", int(d)) for d in x_ty.shape]  # as the importer's
    except TypeError:  # symbolic dims: leave the kernel alone
        return None
    a = te.placeholder(shape, x_ty.dtype, "A")
    b = te.placeholder((), c_ty.dtype, "B")
    unnamed = func.with_attr("global_symbol", "f")
    for compute, op in ((topi.maximum, relax.op.maximum), (topi.minimum, relax.op.minimum)):
        reference = te.create_prim_func([a, b, compute(a, b)]).with_attr("global_symbol", "f")
        if tvm_ffi.structural_equal(unnamed, reference, map_free_vars=True):
            return op
    return None


def ops_from_clamp_kernels(mod):
    """Rewrite ``call_tir`` of scalar maximum/minimum kernels into the Relax operators."""
    import tvm
    from tvm import relax, tirx
    from tvm.relax.expr_functor import PyExprMutator, mutator

    call_tir = tvm.ir.Op.get("relax.call_tir")
    ops: dict[str, object] = {}  # per kernel: a kernel called N times is compared once

    @mutator
    class Rewriter(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not call.op.same_as(call_tir) or not isinstance(call.args[1], relax.Tuple):
                return call
            args = call.args[1].fields
            func = mod[call.args[0]] if isinstance(call.args[0], tvm.ir.GlobalVar) else None
            if len(args) != 2 or not isinstance(func, tirx.PrimFunc):
                return call
            x, c = args
            if not (isinstance(x.ty, relax.TensorType) and isinstance(c.ty, relax.TensorType)):
                return call
            name = call.args[0].name_hint
            if name not in ops:
                ops[name] = _clamp_op(func, x.ty, c.ty)
            op = ops[name]
            return call if op is None else op(x, c)

    rewriter = Rewriter(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get())


def run(mod, *, target):
    from tvm import relax

    mod = ops_from_clamp_kernels(mod)
    mod = relax.transform.ConvertLayout(DESIRED)(mod)
    return relax.transform.FoldConstant()(mod)
