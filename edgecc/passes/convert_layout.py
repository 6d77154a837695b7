"""Convert conv2d to channels-last (NHWC activations, OHWI weights) for CPU targets.

Only the region around the convolutions is converted. TVM's ``ConvertLayout`` asks every
operator of a function how its layout follows its inputs', and several of those rules crash on
shapes real models have (reductions of 2-D tensors, tuples, 5-D reshapes). So every call whose
operator is not on :data:`FOLLOWERS` (ops checked to follow a 4-D layout correctly), or whose
tensors are not 4-D, is hidden from ``ConvertLayout`` behind an opaque packed call first and put
back afterwards: ``ConvertLayout`` then treats it as an op it knows nothing of and hands it its
inputs in their original layout, so the transposes sit at the borders of the converted region.
A function without a conv2d is left as it is. If ``ConvertLayout`` still fails, the function
stays NCHW and the fallback is reported (``edgecc.passes.fallback``), never a failed compile.

ONNX's Clip (ReLU6) arrives from the importer as ``call_tir`` kernels (``topi.maximum`` /
``topi.minimum`` against a scalar), which layout conversion cannot see through: those kernels are
turned back into ``R.maximum`` / ``R.minimum`` first, so the conv chain stays NHWC.
"""

from __future__ import annotations

import numpy as np

from .fallback import report
from .rewrite import each_function

NAME = "convert-layout"
DESCRIPTION = ("Convert conv2d (and the elementwise ops, pools and concats around it) to NHWC, so "
               "kernels vectorize over channels in both input and output; ops without a checked "
               "layout rule keep NCHW, with transposes at the region's borders.")
OPTIONAL = True

DESIRED = {"relax.nn.conv2d": ["NHWC", "OHWI"]}

_UNARY = ("nn.relu", "sigmoid", "tanh", "exp", "clip", "nn.silu", "nn.gelu", "nn.gelu_tanh",
          "negative", "sqrt", "rsqrt", "abs", "erf", "log", "square", "nn.leakyrelu",
          "nn.softplus", "floor", "ceil", "round", "sin", "cos", "astype")  # clip: see below
_BINARY = ("add", "subtract", "multiply", "divide", "maximum", "minimum", "power")
_POOLS = ("nn.max_pool2d", "nn.avg_pool2d", "nn.adaptive_avg_pool2d")
_OTHERS = ("concat", "split", "strided_slice", "mean", "max", "sum", "image.resize2d")
# operators whose layout rule follows a 4-D NCHW -> NHWC change correctly (each checked against
# ONNX Runtime in tests/test_layout.py); the conv itself is what is converted
FOLLOWERS = frozenset("relax." + n for n in ("nn.conv2d", *_UNARY, *_BINARY, *_POOLS,
                                             *_OTHERS))
_OPAQUE = "edgecc.opaque."


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
    """Rewrite ``call_tir`` of scalar maximum/minimum kernels into the Relax operators, and
    ``R.clip`` (which has no layout rule in TVM) into ``R.minimum(R.maximum(x, lo), hi)``."""
    import tvm
    from tvm import relax, tirx
    from tvm.relax.expr_functor import PyExprMutator, mutator

    call_tir = tvm.ir.Op.get("relax.call_tir")
    clip = tvm.ir.Op.get("relax.clip")
    ops: dict[str, object] = {}  # per kernel: a kernel called N times is compared once

    @mutator
    class Rewriter(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op.same_as(clip):
                return _clip_as_clamps(call)
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

    return relax.transform.DeadCodeElimination()(each_function(mod, Rewriter(mod)))


def _clip_as_clamps(call):
    """``R.clip(x, lo, hi)`` as ``R.minimum(R.maximum(x, lo), hi)`` with constants of x's
    dtype (the same values: clip's bounds are cast to x's dtype too)."""
    import numpy as np
    from tvm import relax

    x, lo, hi = call.args
    ty = x.ty
    if not isinstance(ty, relax.TensorType) or not all(hasattr(b, "value") for b in (lo, hi)):
        return call
    dtype = str(ty.dtype)
    if np.dtype(dtype).kind not in "fiu":
        return call
    const = lambda v: relax.const(np.array(v.value).astype(dtype), dtype)  # noqa: E731
    return relax.op.minimum(relax.op.maximum(x, const(lo)), const(hi))


def _tensor_ranks(expr) -> list[int]:
    """Ranks of the tensors ``expr`` carries (a tuple's fields, -1 for a field that is not a
    tensor beside one that is); none for shapes, tuples of values and other non-tensors."""
    from tvm import relax

    ty = getattr(expr, "ty", None)
    if isinstance(ty, relax.TupleType):
        if not any(isinstance(f, relax.TensorType) for f in ty.fields):
            return []  # strided_slice's axes, begins and ends: values, not tensors
        return [f.ndim if isinstance(f, relax.TensorType) else -1 for f in ty.fields]
    return [ty.ndim] if isinstance(ty, relax.TensorType) else []


def follows_layout(call) -> bool:
    """``call`` may take part in the NHWC region: its operator's layout rule is checked and
    every tensor it takes and makes is 4-D (scalars may be broadcast)."""
    import tvm

    if not isinstance(call.op, tvm.ir.Op) or call.op.name not in FOLLOWERS:
        return False
    ranks = [r for a in call.args for r in _tensor_ranks(a)]
    return all(r in (0, 4) for r in ranks) and 4 in ranks and all(
        r == 4 for r in _tensor_ranks(call))


def hide_non_followers(func):
    """``func`` with every call that may not join the NHWC region replaced by an opaque
    ``call_pure_packed("edgecc.opaque.<i>", args...)``, and the calls by index."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    hidden: list = []

    @mutator
    class Hider(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call.op, tvm.ir.Op) or follows_layout(call):
                return call
            if not call.op.name.startswith("relax.") or call.op.name.startswith(
                    ("relax.call_", "relax.builtin", "relax.memory", "relax.vm")):
                return call  # calls of kernels and builtins: ConvertLayout leaves them be
            hidden.append(call)
            return relax.op.call_pure_packed(f"{_OPAQUE}{len(hidden) - 1}", *call.args,
                                             ty_args=[call.ty])

    return Hider().visit_expr(func), hidden


def restore_hidden(func, hidden):
    """Undo :func:`hide_non_followers`: each opaque call becomes its original call again, on
    the (original-layout) arguments ``ConvertLayout`` gave it."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    packed = tvm.ir.Op.get("relax.call_pure_packed")

    @mutator
    class Restorer(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not call.op.same_as(packed) or not isinstance(call.args[0], relax.ExternFunc):
                return call
            symbol = str(call.args[0].global_symbol)
            if not symbol.startswith(_OPAQUE):
                return call
            orig = hidden[int(symbol[len(_OPAQUE):])]
            return relax.Call(orig.op, list(call.args[1:]), orig.attrs, orig.ty_args)

    return Restorer().visit_expr(func)


def _has_conv2d(func) -> bool:
    from tvm import relax

    found = []

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", None) == "relax.nn.conv2d":
            found.append(e)

    relax.analysis.post_order_visit(func, visit)
    return bool(found)


def convert_function(func, name: str):
    """``func`` converted to NHWC around its convs, or as it was (with a fallback note) where
    ``ConvertLayout`` fails on it."""
    import tvm
    from tvm import relax

    if not _has_conv2d(func):
        return func
    hiding, hidden = hide_non_followers(func)
    try:
        converted = relax.transform.ConvertLayout(DESIRED)(
            tvm.IRModule({"main": hiding}))["main"]
    except Exception as e:  # noqa: BLE001  (a TVM layout rule failed: keep NCHW)
        report(f"{NAME}: function '{name}' kept NCHW (TVM's ConvertLayout failed: "
               f"{_last_line(e)})")
        return func
    restored = pads_through_transposes(restore_hidden(converted, hidden))
    return sink_nchw_transposes(restored)


def pads_through_transposes(func):
    """``permute_dims(pad(permute_dims(y, p), w), q)`` with ``q`` undoing ``p`` (the transposes
    ``ConvertLayout`` leaves around a pad: it has no layout rule for it) becomes a pad of ``y``
    in its own layout: an int8 model pads with the activations' zero point before each conv."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    y = wildcard()
    inner = is_op("relax.permute_dims")(y)
    pad = is_op("relax.nn.pad")(inner)
    outer = is_op("relax.permute_dims")(pad)

    def rewrite(expr, m):
        p = [int(a) for a in m[inner].attrs.axes]
        q = [int(a) for a in m[outer].attrs.axes]
        if [p[i] for i in q] != list(range(len(p))):
            return expr
        a = m[pad].attrs
        widths = [int(w) for w in a.pad_width]
        moved = [w for d in q for w in widths[2 * d:2 * d + 2]]  # y's dim j is the pad's q[j]
        return relax.op.nn.pad(m[y], moved, pad_mode=str(a.pad_mode),
                               pad_value=float(a.pad_value))

    return rewrite_call(outer, rewrite, func)


def _ints(values) -> list[int] | None:
    """``values`` (a shape or an axes attribute) as ints, or None where one is symbolic."""
    try:
        return [int(v) for v in values]
    except TypeError:
        return None


_TO_NCHW = [0, 3, 1, 2]
_TO_NHWC = [0, 2, 3, 1]
_SINK_UNARY = frozenset("relax." + n for n in _UNARY if n not in ("clip", "astype"))
_SINK_BINARY = frozenset("relax." + n for n in _BINARY)


def _t(expr):
    """``permute_dims(expr, [0, 3, 1, 2])``: channels-last back to NCHW."""
    from tvm import relax

    return relax.op.permute_dims(expr, _TO_NCHW)


def sink_nchw_transposes(func):
    """Move the transposes back to NCHW that ``ConvertLayout`` leaves before ops it has no rule
    for (or whose rule followed such an op's NCHW output) down past the ops that can take the
    tensor channels-last as well, so that they meet the transpose back to NHWC before the next
    conv and both vanish. With ``t(y) = permute_dims(y, [0, 3, 1, 2])``:

    - ``strided_slice(t(y), axes)`` becomes ``t(strided_slice(y, axes mapped to NHWC))``;
    - ``concat([t(y1), t(y2), ...], axis)`` becomes ``t(concat([y1, y2, ...], NHWC axis))``;
    - a channel shuffle (ShuffleNet's ``reshape`` to ``[N, g, C/g, H, W]``, swap of the two
      group axes, ``reshape`` back) of ``t(y)`` becomes the same shuffle of ``y`` done
      channels-last (``[N, H, W, g, C/g]``, swap of the last two), followed by ``t``;
    - elementwise unary ops of ``t(y)``, and binary ones of ``t(y)`` and a scalar, a 4-D
      constant (transposed with it) or another ``t(...)``, run on ``y`` and are followed by
      ``t``;
    - a 2x2 stride-2 transposed conv of ``t(y)`` (U-Net's up-sampling; TVM lowers transposed
      convs in NCHW only) becomes a channels-last 1x1 conv to 4 x O channels and a
      depth-to-space, followed by ``t``;
    - ``permute_dims(permute_dims(y, p), q)`` becomes ``y`` where ``q`` undoes ``p``, and one
      ``permute_dims`` of ``y`` otherwise.

    Every rewrite is exact and moves a transpose rather than adding one: one that other ops
    still use stays for them, and the moved one then transposes only what the op made."""
    from tvm import relax
    from tvm.ir.expr import GenericConst
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Sinker(PyExprMutator):
        def _permuted(self, expr):
            """``(y, axes)`` if ``expr`` is bound to ``permute_dims(y, axes)`` with known
            axes, else None."""
            value = self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
            if not isinstance(value, relax.Call) or getattr(value.op, "name", "") != \
                    "relax.permute_dims" or value.attrs.axes is None:
                return None
            axes = _ints(value.attrs.axes)
            return None if axes is None else (value.args[0], axes)

        def _nchw_of(self, expr):
            """``y`` if ``expr`` is ``permute_dims(y, [0, 3, 1, 2])`` of a 4-D ``y``."""
            found = self._permuted(expr)
            return found[0] if found is not None and found[1] == _TO_NCHW else None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            name = getattr(call.op, "name", "")
            if name == "relax.permute_dims":
                return self._compose(call)
            if name == "relax.strided_slice":
                return self._slice(call)
            if name == "relax.concat":
                return self._concat(call)
            if name == "relax.reshape":
                return self._shuffle(call)
            if name == "relax.nn.conv2d_transpose":
                return self._up_conv(call)
            if name in _SINK_UNARY and len(call.args) == 1:
                y = self._nchw_of(call.args[0])
                return call if y is None else _t(self.builder_.emit(
                    relax.Call(call.op, [y], call.attrs)))
            if name in _SINK_BINARY and len(call.args) == 2:
                return self._binary(call)
            return call

        def _binary(self, call):
            """``op(t(a), t(b))``, ``op(t(a), c)`` or ``op(c, t(b))`` with ``c`` a scalar or a
            4-D constant: the op on the channels-last tensors (``c`` transposed too)."""
            args = []
            for arg in call.args:
                y = self._nchw_of(arg)
                ty = getattr(arg, "ty", None)
                if y is not None:
                    args.append(y)
                elif isinstance(arg, GenericConst) and ty.ndim == 0:
                    args.append(arg)
                elif isinstance(arg, GenericConst) and ty.ndim == 4:
                    args.append(relax.const(np.transpose(arg.value.numpy(), _TO_NHWC),
                                            str(ty.dtype)))
                else:
                    return call
            if all(a is b for a, b in zip(args, call.args)):
                return call  # no operand was transposed
            return _t(self.builder_.emit(relax.Call(call.op, args, call.attrs)))

        def _up_conv(self, call):
            """A 2x2 stride-2 transposed conv (U-Net's up-sampling) of ``t(y)``: each input pixel
            makes a 2x2 block of outputs that overlap no other's, so it is a 1x1 conv of ``y``
            to 4 x O channels (ordered row, column, channel) followed by depth-to-space, all
            channels-last: ``out[n, 2h+i, 2w+j, o] = z[n, h, w, i, j, o]``."""
            y = self._nchw_of(call.args[0])
            a = call.attrs
            weight = call.args[1]
            if (y is None or not isinstance(weight, GenericConst)
                    or _ints(a.strides) != [2, 2] or _ints(a.padding) != [0, 0, 0, 0]
                    or _ints(a.output_padding) != [0, 0] or _ints(a.dilation) != [1, 1]
                    or int(a.groups) != 1 or a.data_layout != "NCHW"
                    or a.kernel_layout != "IOHW" or a.out_layout != "NCHW"
                    or str(a.out_dtype) not in ("None", "", "void", str(weight.ty.dtype))):
                return call
            w = weight.value.numpy()  # (C, O, 2, 2)
            if w.ndim != 4 or w.shape[2:] != (2, 2) or _shape(y) is None:
                return call
            c, o = w.shape[:2]
            n, h, wd, _ = _shape(y)
            packed = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(4 * o, 1, 1, c))
            z = self.builder_.emit(relax.op.nn.conv2d(
                y, relax.const(packed, str(weight.ty.dtype)), data_layout="NHWC",
                kernel_layout="OHWI", out_layout="NHWC"))
            blocks = self.builder_.emit(relax.op.reshape(z, [n, h, wd, 2, 2, o]))
            rows = self.builder_.emit(relax.op.permute_dims(blocks, [0, 1, 3, 2, 4, 5]))
            return _t(self.builder_.emit(relax.op.reshape(rows, [n, 2 * h, 2 * wd, o])))

        def _compose(self, call):
            inner = self._permuted(call.args[0])
            outer = _ints(call.attrs.axes) if call.attrs.axes is not None else None
            if inner is None or outer is None or len(inner[1]) != len(outer):
                return call
            y, p = inner
            axes = [p[j] for j in outer]  # the outer's dim j is the inner's q[j]: y's p[q[j]]
            return y if axes == list(range(len(axes))) else relax.op.permute_dims(y, axes)

        def _slice(self, call):
            y = self._nchw_of(call.args[0])
            fields = [getattr(a, "fields", None) for a in call.args[1:]]
            if y is None or any(f is None for f in fields):
                return call  # begins or ends given as a tensor, not as values
            axes = _ints(fields[0])
            if axes is None:
                return call
            moved = [_TO_NCHW[a % 4] for a in axes]
            strides = list(fields[3]) if len(fields) > 3 else None
            inner = self.builder_.emit(relax.op.strided_slice(
                y, moved, list(fields[1]), list(fields[2]), strides,
                assume_inbound=bool(call.attrs.assume_inbound)))
            return relax.op.permute_dims(inner, _TO_NCHW)

        def _concat(self, call):
            fields = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else []
            ys = [self._nchw_of(f) for f in fields]
            if not ys or any(y is None for y in ys) or call.attrs.axis is None:
                return call
            axis = _TO_NCHW[int(call.attrs.axis) % 4]
            inner = self.builder_.emit(relax.op.concat(ys, axis=axis))
            return relax.op.permute_dims(inner, _TO_NCHW)

        def _shuffle(self, call):
            swap = self._permuted(call.args[0])
            if swap is None or swap[1] != [0, 2, 1, 3, 4]:
                return call
            split = self.lookup_binding(swap[0]) if isinstance(swap[0], relax.Var) else None
            if not isinstance(split, relax.Call) or getattr(split.op, "name", "") != \
                    "relax.reshape":
                return call
            y = self._nchw_of(split.args[0])
            nchw = _shape(split.args[0])
            parts, out = _shape(split), _shape(call)
            if y is None or nchw is None or parts is None or out != nchw or len(nchw) != 4:
                return call
            n, c, h, w = nchw
            if len(parts) != 5 or parts[0] != n or parts[1] * parts[2] != c or parts[3:] != [h, w]:
                return call
            g = parts[1]
            grouped = self.builder_.emit(relax.op.reshape(y, [n, h, w, g, c // g]))
            swapped = self.builder_.emit(relax.op.permute_dims(grouped, [0, 1, 2, 4, 3]))
            merged = self.builder_.emit(relax.op.reshape(swapped, [n, h, w, c]))
            return relax.op.permute_dims(merged, _TO_NCHW)

    return relax.analysis.remove_all_unused(Sinker().visit_expr(func))


def _shape(expr) -> list[int] | None:
    ty = getattr(expr, "ty", None)
    shape = getattr(ty, "shape", None)
    return None if shape is None else _ints(shape)


def _last_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(e).__name__


def run(mod, *, target):
    from tvm import relax

    mod = ops_from_clamp_kernels(mod)
    out = mod.clone()
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = convert_function(func, gv.name_hint)
    return relax.transform.FoldConstant()(out)
