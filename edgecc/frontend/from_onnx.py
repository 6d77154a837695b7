"""ONNX import: an ONNX file or ``onnx.ModelProto`` becomes a Relax IRModule.

Weights become constants of the module (``keep_params_in_input=False``) so they are baked into the
compiled library.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError, UnsupportedOperatorError
from ..artifact.manifest import DYNAMIC, TensorSpec

# ONNX TensorProto element types TVM's importer and both loaders take (manifest.DTYPES)
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
                7: "int64", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
                16: "bfloat16", 17: "float8_e4m3fn", 19: "float8_e5m2",
                24: "float8_e8m0fnu"}


@dataclass(frozen=True)
class ImportedModel:
    mod: Any  # tvm.IRModule
    name: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    source: str  # "onnx" or "torch"



def read_onnx(path: str | os.PathLike) -> tuple[Any, bytes]:
    """Read and validate an ONNX file; returns (ModelProto, raw bytes)."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file '{p}' not found")
    if p.is_dir():
        raise ModelError(f"model path '{p}' is a directory, expected an .onnx file")
    data = p.read_bytes()
    if not data:
        raise ModelError(f"model file '{p}' is empty")
    return parse_onnx_bytes(data, source=str(p)), data


def parse_onnx_bytes(data: bytes, *, source: str):
    import onnx  # noqa: PLC0415
    from google.protobuf.message import DecodeError  # noqa: PLC0415

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelError(f"'{source}' is not a valid ONNX model (cannot parse: {e})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelError(f"'{source}' is not a valid ONNX model (no graph or no nodes; "
                         "truncated or not an ONNX file?)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"'{source}' is not a valid ONNX model (truncated or corrupt?): "
                         f"{first}") from None
    return model


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def find_unsupported_ops(model) -> dict[str, list[str]]:
    """All operator types the Relax ONNX importer cannot convert, with the nodes that use them."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map  # noqa: PLC0415

    supported = set(_get_convert_map()) | {"Constant", "If"}
    bad: dict[str, list[str]] = {}
    for i, node in enumerate(_all_nodes(model.graph)):
        domain = node.domain or ""
        op = node.op_type if domain in ("", "ai.onnx") else f"{domain}::{node.op_type}"
        if domain not in ("", "ai.onnx") or node.op_type not in supported:
            bad.setdefault(op, []).append(node.name or f"#{i}")
    return bad


def onnx_inputs(model) -> list[tuple[str, list[int | str | None], str]]:
    init = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in init:
            continue
        tt = vi.type.tensor_type
        if vi.type.HasField("optional_type"):  # an optional tensor: always given here
            tt = vi.type.optional_type.elem_type.tensor_type
        dtype = _ONNX_DTYPES.get(tt.elem_type)
        if dtype is None:
            raise ModelError(f"input '{vi.name}' has an unsupported element type "
                             f"({tt.elem_type}); supported: {', '.join(_ONNX_DTYPES.values())}")
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:  # 0: an empty tensor
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        out.append((vi.name, dims, dtype))
    return out


def resolve_input_shapes(
    declared: Sequence[tuple[str, list[int | str | None], str]],
    pinned: Mapping[str, Sequence[int]],
) -> dict[str, tuple[int, ...]]:
    """Static shapes for every input: declared ones, overridden by ``pinned``; dynamic dims must
    be pinned."""
    names = [n for n, _, _ in declared]
    unknown = sorted(set(pinned) - set(names))
    if unknown:
        raise ModelError(f"--input-shape names unknown input(s) {', '.join(unknown)}; "
                         f"the model's inputs are: {', '.join(names)}")
    shapes: dict[str, tuple[int, ...]] = {}
    dynamic = []
    for name, dims, _ in declared:
        if name in pinned:
            shape = tuple(int(s) for s in pinned[name])
            if len(shape) != len(dims):
                raise ModelError(f"--input-shape {name}: rank {len(shape)} given but the model "
                                 f"declares rank {len(dims)} ({_fmt_dims(dims)})")
            for s, d in zip(shape, dims, strict=True):
                if s <= 0:
                    raise ModelError(f"--input-shape {name}: dimensions must be positive")
                if isinstance(d, int) and d != s:
                    raise ModelError(f"--input-shape {name}={_fmt_dims(list(shape))} conflicts with "
                                     f"the model's fixed shape {_fmt_dims(dims)}")
            shapes[name] = shape
        elif any(not isinstance(d, int) for d in dims):
            dynamic.append(f"{name} [{_fmt_dims(dims)}]")
        else:
            shapes[name] = tuple(dims)  # type: ignore[arg-type]
    if dynamic:
        raise ModelError("input(s) with dynamic dimensions: " + ", ".join(dynamic)
                         + "; pin them with --input-shape NAME=d0,d1,... "
                         "(API: input_shapes={'NAME': (d0, d1, ...)})")
    return shapes


def _fmt_dims(dims) -> str:
    return ",".join("?" if d is None else str(d) for d in dims)


def import_onnx(model, *, raw: bytes, name: str,
                input_shapes: Mapping[str, Sequence[int]]) -> ImportedModel:
    from tvm.relax.frontend.onnx import from_onnx  # noqa: PLC0415

    bad = find_unsupported_ops(model)
    if bad:
        raise UnsupportedOperatorError(bad)
    declared = onnx_inputs(model)
    shapes = resolve_input_shapes(declared, input_shapes)
    dtypes = {n: dt for n, _, dt in declared}
    # only the shapes the model does not declare itself (TVM's importer mishandles a declared
    # zero-size dim passed again)
    pinned = {n: shapes[n] for n, dims, _ in declared if tuple(dims) != shapes[n]}
    try:
        mod = from_onnx(model, shape_dict=pinned, dtype_dict=dtypes, keep_params_in_input=False)
    except Exception as e:  # the importer raises many types for model-side problems
        raise ModelError(f"TVM's ONNX importer could not convert '{name}': "
                         f"{type(e).__name__}: {first_line(e)}") from e
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if unknown_shapes(mod) and not qdq:  # (folding would dequantize a QDQ model's weights)
        mod = _import_shape_folded(model, mod, shapes=pinned, dtypes=dtypes)
    inputs = tuple(TensorSpec(n, shapes[n], dtypes[n]) for n, _, _ in declared)
    out_names = [o.name for o in model.graph.output]
    return ImportedModel(mod=mod, name=name, sha256=hashlib.sha256(raw).hexdigest(),
                         inputs=inputs, outputs=output_specs(mod, out_names), source="onnx")


def unknown_shapes(mod) -> int:
    """How many tensors of ``main`` have a shape the importer could not work out (TVM's lowering
    fails on some of them, e.g. a concat of two such tensors)."""
    from tvm import relax  # noqa: PLC0415

    count = [0]

    def visit(e):
        ty = getattr(e, "ty", None) if isinstance(e, relax.Var) else None
        if isinstance(ty, relax.TensorType) and ty.shape is None:
            count[0] += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return count[0]


def _import_shape_folded(model, mod, *, shapes, dtypes):
    """Re-import ``model`` after ONNX Runtime's basic graph optimizer (constant folding, with the
    input shapes fixed) computed what the graph derives from tensor shapes (Shape -> Gather ->
    Div -> Slice, as torch exports ``chunk``); the first import ``mod`` if that does not leave
    fewer unknown shapes. Reported as a fallback note when used."""
    import onnx  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415
    from tvm.relax.frontend.onnx import from_onnx  # noqa: PLC0415

    from ..passes.fallback import report  # noqa: PLC0415

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for vi in fixed.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[vi.name], strict=True):
                d.Clear()
                d.dim_value = v
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(fixed.SerializeToString(), opts,
                                 providers=["CPUExecutionProvider"])
            folded = onnx.load(opts.optimized_model_filepath)
            again = from_onnx(folded, shape_dict=shapes, dtype_dict=dtypes,
                              keep_params_in_input=False)
        except Exception:  # noqa: BLE001  (keep the first import)
            return mod
    before, after = unknown_shapes(mod), unknown_shapes(again)
    if after >= before:
        return mod
    report(f"import: {before} tensor shape(s) are computed inside the ONNX graph (Shape, Gather, "
           f"Slice...); folded with ONNX Runtime's basic graph optimizer first ({after} left)")
    return again


def first_line(e: BaseException) -> str:
    s = str(e).strip()
    lines = [ln for ln in s.splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def ret_leaves(mod) -> list:
    from tvm import relax  # noqa: PLC0415

    ret = mod["main"].ret_ty
    return list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]


def output_specs(mod, names: Sequence[str]) -> tuple[TensorSpec, ...]:
    from tvm import relax, tirx  # noqa: PLC0415

    leaves = ret_leaves(mod)
    specs = []
    for i, sinfo in enumerate(leaves):
        name = names[i] if i < len(names) else f"output{i}"
        if not isinstance(sinfo, relax.TensorType) or sinfo.ndim < 0:
            raise ModelError(f"output #{i} ('{name}') is not a tensor of known rank after import "
                             f"({sinfo}); edgecc artifacts return tensors")
        # a dim that depends on input values (NonZero, Range, ...) is known only at run time
        shape = (tuple(int(s) if isinstance(s, tirx.IntImm) else DYNAMIC
                       for s in sinfo.shape.values) if sinfo.shape is not None
                 else (DYNAMIC,) * sinfo.ndim)
        specs.append(TensorSpec(name, shape, str(sinfo.dtype)))
    return tuple(specs)
