"""Run (and train) an ONNX graph in PyTorch: the bridge the pruning and distillation stages use.

``OnnxModule(model)`` executes the graph node by node with torch ops; Conv/Gemm/MatMul weights and
biases and BatchNormalization's affine parameters become trainable ``nn.Parameter``s, BN running
statistics become buffers (updated in train mode, as in PyTorch). ``to_onnx()`` writes the current
values back into a copy of the model, so a user's ONNX file is fine-tuned in place of its weights.
Only the operators of common CNN/MLP classifiers are covered; others are refused by name.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ModelError

SUPPORTED = ("Conv", "BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "MaxPool",
             "AveragePool", "GlobalAveragePool", "Flatten", "Gemm", "MatMul", "Add", "Mul",
             "Reshape", "Identity", "Dropout", "Softmax")
_TRAINABLE = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "BatchNormalization": (1, 2)}
_BUFFERS = {"BatchNormalization": (3, 4)}


def _attrs(node) -> dict:
    from onnx import helper  # noqa: PLC0415

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def check_supported(model) -> None:
    bad = sorted({n.op_type for n in model.graph.node if n.op_type not in SUPPORTED})
    if bad:
        raise ModelError(f"cannot train this model in PyTorch: unsupported operator(s) "
                         f"{', '.join(bad)} (supported: {', '.join(SUPPORTED)})")


def _safe(index: int, name: str) -> str:
    """A unique attribute name for an initializer (ONNX names may hold '.', '/', ':')."""
    return f"p{index}_" + "".join(c if c.isalnum() else "_" for c in name)


def make_module(model):
    """An ``nn.Module`` that runs ``model`` (an ``onnx.ModelProto``); see the module docstring."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: N812, PLC0415
    from onnx import numpy_helper  # noqa: PLC0415

    check_supported(model)
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    trainable = {n.input[i] for n in graph.node for i in _TRAINABLE.get(n.op_type, ())
                 if i < len(n.input) and n.input[i] in inits}
    buffers = {n.input[i] for n in graph.node for i in _BUFFERS.get(n.op_type, ())
               if n.input[i] in inits}
    init_names = {t.name for t in graph.initializer}
    input_names = [i.name for i in graph.input if i.name not in init_names]
    output_names = [o.name for o in graph.output]

    def pad2(pads):
        if not pads:
            return 0, None
        if pads[0] == pads[2] and pads[1] == pads[3]:
            return (pads[0], pads[1]), None
        return 0, (pads[1], pads[3], pads[0], pads[2])

    ops: dict[str, Callable] = {}

    def op(name):
        def deco(fn):
            ops[name] = fn
            return fn
        return deco

    @op("Conv")
    def _conv(a, x, w, b=None):
        padding, explicit = pad2(a.get("pads"))
        if explicit:
            x = F.pad(x, explicit)
        return F.conv2d(x, w, b, stride=tuple(a.get("strides", (1, 1))), padding=padding,
                        dilation=tuple(a.get("dilations", (1, 1))), groups=a.get("group", 1))

    @op("BatchNormalization")
    def _bn(a, x, scale, bias, mean, var, self=None):
        return F.batch_norm(x, mean, var, scale, bias, training=self.training,
                            momentum=1 - a.get("momentum", 0.9), eps=a.get("epsilon", 1e-5))

    @op("Relu")
    def _relu(a, x):
        return F.relu(x)

    @op("Clip")
    def _clip(a, x, lo=None, hi=None):
        return torch.clamp(x, None if lo is None else float(lo), None if hi is None else float(hi))

    @op("LeakyRelu")
    def _leaky(a, x):
        return F.leaky_relu(x, a.get("alpha", 0.01))

    @op("Sigmoid")
    def _sigmoid(a, x):
        return torch.sigmoid(x)

    @op("MaxPool")
    def _maxpool(a, x):
        padding, explicit = pad2(a.get("pads"))
        if explicit:
            x = F.pad(x, explicit, value=float("-inf"))
        return F.max_pool2d(x, tuple(a["kernel_shape"]), tuple(a.get("strides", a["kernel_shape"])),
                            padding, ceil_mode=bool(a.get("ceil_mode", 0)))

    @op("AveragePool")
    def _avgpool(a, x):
        padding, explicit = pad2(a.get("pads"))
        if explicit:
            x = F.pad(x, explicit)
        return F.avg_pool2d(x, tuple(a["kernel_shape"]), tuple(a.get("strides", a["kernel_shape"])),
                            padding, ceil_mode=bool(a.get("ceil_mode", 0)),
                            count_include_pad=bool(a.get("count_include_pad", 0)))

    @op("GlobalAveragePool")
    def _gap(a, x):
        return x.mean(dim=(2, 3), keepdim=True)

    @op("Flatten")
    def _flatten(a, x):
        return torch.flatten(x, a.get("axis", 1))

    @op("Gemm")
    def _gemm(a, x, w, c=None):
        if a.get("transA", 0):
            x = x.t()
        y = x @ (w.t() if a.get("transB", 0) else w) * a.get("alpha", 1.0)
        return y if c is None else y + c * a.get("beta", 1.0)

    ops["MatMul"] = lambda a, x, w: torch.matmul(x, w)
    ops["Add"] = lambda a, x, y: x + y
    ops["Mul"] = lambda a, x, y: x * y
    ops["Reshape"] = lambda a, x, s: x.reshape([int(v) for v in s])
    ops["Identity"] = lambda a, x: x
    ops["Dropout"] = lambda a, x, *rest: x
    ops["Softmax"] = lambda a, x: torch.softmax(x, a.get("axis", -1))

    nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in graph.node]

    class OnnxModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.names: dict[str, str] = {}
            self.consts: dict[str, torch.Tensor] = {}
            for index, (name, value) in enumerate(inits.items()):
                t = torch.from_numpy(np.array(value))
                if name in trainable:
                    self.register_parameter(_safe(index, name), torch.nn.Parameter(t.float()))
                    self.names[name] = _safe(index, name)
                elif name in buffers:
                    self.register_buffer(_safe(index, name), t.float().clone())
                    self.names[name] = _safe(index, name)
                else:
                    self.consts[name] = t

        def value(self, name):
            if name in self.names:
                return getattr(self, self.names[name])
            return self.consts[name]

        def forward(self, *xs):
            env = dict(zip(input_names, xs, strict=True))
            for op_type, ins, outs, a in nodes:
                args = [None if not i else (env[i] if i in env else self.value(i)) for i in ins]
                fn = ops[op_type]
                y = fn(a, *args, self=self) if op_type == "BatchNormalization" else fn(a, *args)
                env[outs[0]] = y
            res = [env[o] for o in output_names]
            return res[0] if len(res) == 1 else tuple(res)

        def to_onnx(self):
            """A copy of the model with this module's current parameters and BN statistics."""
            out = type(model)()
            out.CopyFrom(model)
            for t in out.graph.initializer:
                if t.name in self.names:
                    v = self.value(t.name).detach().cpu().numpy().astype(inits[t.name].dtype)
                    t.CopyFrom(numpy_helper.from_array(v, t.name))
            return out

    return OnnxModule()


def module_to_onnx(path, input_shapes: dict[str, tuple[int, ...]]):
    """An ``onnx.ModelProto`` from a whole ``torch.nn.Module`` saved with ``torch.save`` (its
    class must be importable here), exported in eval mode (opset 17) with the given inputs."""
    import io  # noqa: PLC0415
    import warnings  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    import onnx  # noqa: PLC0415
    import torch  # noqa: PLC0415

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file '{p}' not found")
    if not input_shapes:
        raise ModelError(f"'{p}' is a torch model: give its input with --input-shape NAME=d0,d1,...")
    try:
        module = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  (pickle and torch raise many types)
        raise ModelError(f"cannot load '{p}' with torch.load: {type(e).__name__}: {e}") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"'{p}' holds a {type(module).__name__}, not a torch.nn.Module (save the "
                         "whole module with torch.save(model, path), not its state_dict)")
    module.eval()
    examples = tuple(torch.zeros(shape) for shape in input_shapes.values())
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, examples, buf, dynamo=False, opset_version=17,
                          input_names=list(input_shapes), output_names=["output"])
    return onnx.load_model_from_string(buf.getvalue())
