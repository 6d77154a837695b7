"""Frontend stage: a model (ONNX file, ``onnx.ModelProto``, ``torch.nn.Module``) becomes a
Relax IRModule plus the input and output specs the manifest records.

``source`` reads what the user handed in without importing TVM; ``from_onnx`` and
``from_torch`` import it; ``onnx_torch`` turns small ONNX CNNs into torch modules and back (for
distillation and ``edgecc export``).
"""

from __future__ import annotations

from .from_onnx import (
    ImportedModel,
    find_unsupported_ops,
    import_onnx,
    onnx_inputs,
    parse_onnx_bytes,
    read_onnx,
    resolve_input_shapes,
    unknown_shapes,
)
from .from_torch import import_torch
from .source import ModelSource, import_model, is_torch_module, model_source, parse_source

__all__ = ["ImportedModel", "ModelSource", "find_unsupported_ops", "import_model", "import_onnx",
           "import_torch", "is_torch_module", "model_source", "onnx_inputs", "parse_onnx_bytes",
           "parse_source", "read_onnx", "resolve_input_shapes", "unknown_shapes"]
