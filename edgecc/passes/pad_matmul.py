"""Pad matrix products whose row or column count splits badly, and slice the result back.

A matrix product's register tile takes its rows from the rows of the left operand and its
vectors from the columns of the right one (``edgecc/schedules/rule_tiling.py``), in factors that
divide them. A prime count leaves no such factor: ViT's 197 tokens give its linear layers a
one-row tile, and its attention scores (197 x 197) a one-element "vector", so those kernels ran
at a fraction of the others' speed. Here the left operand gets zero rows up to a multiple of
:data:`ROWS` and the right one zero columns up to a multiple of :data:`COLUMNS`, and the product
is sliced back to its real shape. The rows and columns kept are exactly the product of the real
ones (zeros only add rows and columns that are dropped). Products too small to gain are left
as they are.
"""

from __future__ import annotations

from .rewrite import each_function

NAME = "pad-matmul"
OPTIONAL = True  # an optimization: a model compiles without it
DESCRIPTION = ("Matrix products whose row count has no divisor from 4 to 6 (ViT's 197 tokens) "
               "or whose column count is not a multiple of 16 get zero rows / columns up to "
               "the next multiple of 6 / 16 and are sliced back, so their register tile fits.")

ROWS = 6  # the rule's register tile takes 6 rows
COLUMNS = 16  # two AVX2 vectors, one AVX-512 vector of float32
MIN_ROWS = 24  # fewer rows than this: the product is too small to gain
MIN_COLUMNS = 24


def padded_rows(m: int) -> int:
    """The row count to compute for ``m`` rows: ``m`` if it has a divisor from 4 to
    :data:`ROWS` (a full register tile) or is small, else the next multiple of :data:`ROWS`."""
    if m < MIN_ROWS or any(m % d == 0 for d in range(4, ROWS + 1)):
        return m
    return -(-m // ROWS) * ROWS


def padded_columns(n: int) -> int:
    """The column count to compute for ``n`` columns: ``n`` if a multiple of :data:`COLUMNS`
    or small, else the next multiple."""
    if n < MIN_COLUMNS or n % COLUMNS == 0:
        return n
    return -(-n // COLUMNS) * COLUMNS


def run(mod, *, target):
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    matmul = tvm.ir.Op.get("relax.matmul")

    def static_shape(expr):
        ty = expr.ty
        if not isinstance(ty, relax.TensorType) or ty.shape is None or ty.ndim < 2:
            return None
        if str(ty.dtype) not in ("float32", "float16"):
            return None
        try:
            return [int(d) for d in ty.shape.values]
        except TypeError:  # symbolic dims
            return None

    @mutator
    class Rewriter(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not call.op.same_as(matmul):
                return call
            a, b = call.args
            sa, sb = static_shape(a), static_shape(b)
            if sa is None or sb is None:
                return call
            m, n = sa[-2], sb[-1]
            m2, n2 = padded_rows(m), padded_columns(n)
            if (m2, n2) == (m, n):
                return call
            if m2 != m:
                a = self.builder_.emit(relax.op.nn.pad(
                    a, [0, 0] * (len(sa) - 2) + [0, m2 - m, 0, 0]))
            if n2 != n:
                b = self.builder_.emit(relax.op.nn.pad(
                    b, [0, 0] * (len(sb) - 1) + [0, n2 - n]))
            product = self.builder_.emit(relax.op.matmul(a, b, out_dtype=call.attrs.out_dtype))
            return relax.op.strided_slice(product, axes=[-2, -1], begin=[0, 0], end=[m, n])

    return each_function(mod, Rewriter(mod))
