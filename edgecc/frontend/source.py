"""What the user handed in: an ONNX file path, an ``onnx.ModelProto`` or a ``torch.nn.Module``,
read without importing TVM, and the frontend stage that imports any of them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "onnx" or "torch"
    raw: bytes | None  # the ONNX bytes (None for a torch module)
    name: str  # display name: the file's stem, the graph's or the module class's name
    origin: str  # where it came from, for error messages (the path, or the name)


def model_source(model, *, example_inputs: Sequence[Any] | None = None) -> ModelSource:
    """Read ``model`` (without importing TVM); a :class:`ModelError` if it is none of the
    accepted kinds, missing, or a torch module without ``example_inputs``."""
    if isinstance(model, str | Path):
        p = Path(model)
        if not p.exists():
            raise ModelError(f"model file '{p}' not found")
        if p.is_dir():
            raise ModelError(f"model path '{p}' is a directory, expected an .onnx file")
        return ModelSource("onnx", p.read_bytes(), p.stem, str(p))
    if type(model).__name__ == "ModelProto" and hasattr(model, "SerializeToString"):
        name = model.graph.name or "model"
        return ModelSource("onnx", model.SerializeToString(), name, name)
    if is_torch_module(model):
        if example_inputs is None:
            raise ModelError("compiling a torch.nn.Module needs example_inputs=(tensor, ...)")
        name = type(model).__name__
        return ModelSource("torch", None, name, name)
    raise ModelError(f"cannot compile a {type(model).__name__}: expected an ONNX file path, "
                     "an onnx.ModelProto or a torch.nn.Module")


def is_torch_module(obj) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def parse_source(source: ModelSource, raw: bytes | None = None):
    """The ``onnx.ModelProto`` of an ONNX source (of ``raw`` if given: a rewritten copy)."""
    from .from_onnx import parse_onnx_bytes  # noqa: PLC0415

    return parse_onnx_bytes(source.raw if raw is None else raw, source=source.origin)


def import_model(model, source: ModelSource, *, shapes: dict[str, tuple[int, ...]],
                 example_inputs=None, raw: bytes | None = None):
    """The frontend stage for any accepted model kind: an :class:`ImportedModel`. ``raw``
    replaces the source's ONNX bytes (the int8 QDQ copy of the model)."""
    if source.kind == "onnx":
        from .from_onnx import import_onnx  # noqa: PLC0415

        data = source.raw if raw is None else raw
        return import_onnx(parse_source(source, data), raw=data, name=source.name,
                           input_shapes=shapes)
    if shapes:
        raise ModelError("--input-shape is for ONNX models; a torch module takes its shapes "
                         "from example_inputs")
    from .from_torch import import_torch  # noqa: PLC0415

    return import_torch(model, example_inputs, name=source.name)
