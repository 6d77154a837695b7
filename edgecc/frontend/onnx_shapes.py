"""Shapes and FLOPs of an ONNX graph, from ONNX's shape inference (no TVM): what pruning
reports and what pipeline partitioning balances its stages by."""

from __future__ import annotations

import math

from .from_onnx import _ONNX_DTYPES

CONTRACTIONS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def tensor_shapes(model, *, inferred=None) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (dims, dtype) of every tensor of ``model`` whose shape ONNX's inference knows
    (an unknown dim is -1), its initializers included. ``inferred``: the model already run
    through ``onnx.shape_inference.infer_shapes``."""
    import onnx  # noqa: PLC0415
    from onnx import numpy_helper  # noqa: PLC0415

    inferred = inferred if inferred is not None else onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        out[vi.name] = (dims, _ONNX_DTYPES.get(tt.elem_type, "float32"))
    for t in inferred.graph.initializer:
        a = numpy_helper.to_array(t)
        out[t.name] = (tuple(a.shape), str(a.dtype))
    return out


def elements(dims) -> int:
    """Element count of a shape, unknown (-1) dims counted as 1."""
    return math.prod(max(int(d), 1) for d in dims)


def node_flops(node, shapes) -> int | None:
    """FLOPs (2 x multiply-adds) of a Conv, ConvTranspose, Gemm or MatMul node from
    :func:`tensor_shapes`; None for other ops or when a shape it needs is unknown."""
    if node.op_type not in CONTRACTIONS or node.output[0] not in shapes:
        return None
    out = elements(shapes[node.output[0]][0])
    if node.op_type in ("Conv", "ConvTranspose"):
        if node.input[1] not in shapes:
            return None
        window = elements(shapes[node.input[1]][0][1:])  # (Cin or Cout)/groups x kh x kw
        if node.op_type == "Conv":
            return 2 * out * window
        if node.input[0] not in shapes:
            return None
        return 2 * elements(shapes[node.input[0]][0]) * window  # each input scatters a window
    if node.input[0] not in shapes or not shapes[node.input[0]][0]:
        return None
    a = shapes[node.input[0]][0]
    transposed = node.op_type == "Gemm" and any(x.name == "transA" and x.i
                                                 for x in node.attribute)
    k = a[-2] if transposed and len(a) >= 2 else a[-1]
    return 2 * out * max(int(k), 1)


def model_flops(model) -> int:
    """FLOPs of the Conv, ConvTranspose, Gemm and MatMul nodes of ``model``."""
    shapes = tensor_shapes(model)
    return sum(f for n in model.graph.node if (f := node_flops(n, shapes)) is not None)
