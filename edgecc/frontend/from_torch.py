"""Torch import: a ``torch.nn.Module`` becomes a Relax IRModule through ``torch.export`` and
Relax's exported-program frontend (not through an ONNX round trip): it keeps the real aten
semantics, needs no ONNX exporter and the result is checked against PyTorch itself."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..artifact.manifest import TensorSpec
from ..errors import ModelError
from .from_onnx import ImportedModel, first_line, output_specs, ret_leaves



def import_torch(module, example_inputs: Sequence[Any], *, name: str) -> ImportedModel:
    import torch  # noqa: PLC0415
    from tvm.relax.frontend.torch import from_exported_program  # noqa: PLC0415

    if not isinstance(example_inputs, tuple | list) or not example_inputs:
        raise ModelError("a torch.nn.Module needs example_inputs: a tuple of example tensors")
    example = tuple(example_inputs)
    module = module.eval()
    try:
        with torch.no_grad():
            ep = torch.export.export(module, example)
    except Exception as e:
        raise ModelError(f"torch.export could not trace the module: {type(e).__name__}: "
                         f"{first_line(e)}") from e
    try:
        mod = from_exported_program(ep, keep_params_as_input=False, unwrap_unit_return_tuple=True)
    except Exception as e:
        raise ModelError(f"TVM's exported-program importer could not convert the module: "
                         f"{type(e).__name__}: {first_line(e)}") from e
    in_names = [s.arg.name for s in ep.graph_signature.input_specs
                if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    inputs = tuple(TensorSpec(n, tuple(t.shape), str(t.dtype).removeprefix("torch."))
                   for n, t in zip(in_names, example, strict=True))
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(str(ep.graph).encode())
    outputs = output_specs(mod, [f"output{i}" for i in range(len(ret_leaves(mod)))])
    return ImportedModel(mod=mod, name=name, sha256=h.hexdigest(), inputs=inputs,
                         outputs=outputs, source="torch")
