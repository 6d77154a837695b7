"""Pruning of ONNX models: global L1 unstructured (torch.nn.utils.prune) and L1 structured channel
pruning that physically removes conv output channels.

Structured pruning removes, for every prunable Conv, the output channels with the smallest L1
weight norm, together with the matching BatchNormalization entries and the matching input channels
of the layer that consumes them (a Conv, or a Gemm after GlobalAveragePool + Flatten). A Conv whose
output feeds a residual Add, a Concat, several consumers or the graph output keeps its channels
(reported). The result is a smaller dense model: fewer FLOPs, faster kernels, smaller weights.

The channel math (``l1_channel_mask``) and the FLOP count are plain numpy functions.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, ModelError

METHODS = ("l1-unstructured", "l1-structured")
# channel-wise ops a pruned channel may flow through on its way to the next layer
_PASS_THROUGH = ("BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "MaxPool",
                 "AveragePool", "Dropout", "Identity")
_WEIGHT_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1}


def check_sparsity(sparsity: float) -> float:
    if not 0.0 < sparsity < 1.0:
        raise InputError(f"sparsity must be in (0, 1), got {sparsity}")
    return float(sparsity)


def l1_channel_mask(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean mask over the output channels (axis 0) of ``weight`` keeping the
    ``round(C * (1 - sparsity))`` (at least one) channels with the largest L1 norm; ties keep the
    lower index."""
    check_sparsity(sparsity)
    c = weight.shape[0]
    keep = max(1, int(round(c * (1.0 - sparsity))))
    norms = np.abs(weight.reshape(c, -1)).sum(axis=1)
    order = np.lexsort((np.arange(c), -norms))  # by norm descending, then index
    mask = np.zeros(c, dtype=bool)
    mask[order[:keep]] = True
    return mask


def conv_flops(cout: int, cin: int, kh: int, kw: int, hout: int, wout: int, groups: int = 1) -> int:
    """Multiply-adds x 2 of one convolution (batch 1)."""
    return 2 * cout * (cin // groups) * kh * kw * hout * wout


def count_flops(model) -> int:
    """FLOPs (2 x multiply-adds) of the Conv, ConvTranspose, Gemm and MatMul nodes of an ONNX
    model, from inferred shapes (:func:`edgecc.frontend.onnx_shapes.model_flops`)."""
    from ..frontend.onnx_shapes import model_flops  # noqa: PLC0415

    return model_flops(model)


@dataclass(frozen=True)
class PruneReport:
    method: str
    sparsity: float  # requested
    achieved: float  # real fraction of zero weights (unstructured) or removed channels (structured)
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # conv -> (before, after)
    skipped: dict[str, str] = field(default_factory=dict)  # conv -> why its channels were kept

    def describe(self) -> str:
        what = ("of Conv/Gemm/MatMul weights zero" if self.method == "l1-unstructured"
                else "of the pruned convs' output channels removed")
        lines = [f"{self.method}: {self.achieved * 100:.1f}% {what} "
                 f"(asked {self.sparsity * 100:.0f}%); parameters {self.params_before:,} -> "
                 f"{self.params_after if self.method == 'l1-structured' else self.params_before:,}"
                 f"; FLOPs {self.flops_before:,} -> {self.flops_after:,} "
                 f"({self.flops_before / max(self.flops_after, 1):.2f}x fewer)"]
        lines += [f"  {name}: {a} -> {b} channels" for name, (a, b) in self.channels.items()]
        lines += [f"  {name}: kept ({why})" for name, why in self.skipped.items()]
        if self.method == "l1-unstructured":
            lines.append("  note: zeros do not make dense kernels faster; the size gain needs "
                         "compression of the file, the speed gain needs l1-structured")
        return "\n".join(lines)


def _weight_names(model) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [n.input[i] for n in model.graph.node for op, i in _WEIGHT_OPS.items()
            if n.op_type == op and len(n.input) > i and n.input[i] in inits]


def _param_count(model) -> int:
    from onnx import numpy_helper  # noqa: PLC0415

    return int(sum(numpy_helper.to_array(t).size for t in model.graph.initializer))


def prune(model, *, sparsity: float, method: str = "l1-unstructured"):
    """Prune an ``onnx.ModelProto``; returns (pruned copy, :class:`PruneReport`)."""
    check_sparsity(sparsity)
    if method not in METHODS:
        raise InputError(f"unknown pruning method '{method}'; choose one of: {', '.join(METHODS)}")
    if not _weight_names(model):
        raise ModelError("the model has no Conv, Gemm or MatMul weights to prune")
    fn = _unstructured if method == "l1-unstructured" else _structured
    return fn(model, sparsity)


def _unstructured(model, sparsity: float):
    """Global L1 magnitude pruning over every Conv/Gemm/MatMul weight with
    ``torch.nn.utils.prune.global_unstructured``."""
    import torch  # noqa: PLC0415
    from onnx import numpy_helper  # noqa: PLC0415
    from torch.nn.utils import prune as tprune  # noqa: PLC0415

    out = type(model)()
    out.CopyFrom(model)
    names = _weight_names(out)
    tensors = {t.name: t for t in out.graph.initializer}
    holders = []
    for name in names:
        holder = torch.nn.Module()
        holder.weight = torch.nn.Parameter(torch.from_numpy(numpy_helper.to_array(tensors[name])
                                                            .astype(np.float32).copy()))
        holders.append(holder)
    tprune.global_unstructured([(h, "weight") for h in holders],
                               pruning_method=tprune.L1Unstructured, amount=sparsity)
    zeros = total = 0
    for name, h in zip(names, holders, strict=True):
        tprune.remove(h, "weight")  # make the mask permanent
        w = h.weight.detach().numpy()
        zeros += int((w == 0).sum())
        total += w.size
        tensors[name].CopyFrom(numpy_helper.from_array(
            w.astype(numpy_helper.to_array(tensors[name]).dtype), name))
    flops = count_flops(model)
    params = _param_count(model)
    return out, PruneReport("l1-unstructured", sparsity, zeros / total, flops, flops, params,
                            params)


def _unshare_initializers(graph) -> None:
    """Give every extra use of a shared initializer its own copy (exporters deduplicate equal
    constants, e.g. two all-zero biases), so slicing one layer's channels cannot touch another's."""
    inits = {t.name: t for t in graph.initializer}
    # the TorchScript exporter deduplicates with Identity(initializer): make those initializers too
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy = graph.initializer.add()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        inits[copy.name] = copy
        graph.node.remove(node)
    seen: set[str] = set()
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = graph.initializer.add()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.name or node.output[0]}"
                node.input[i] = copy.name
            seen.add(name)


def _structured(model, sparsity: float):
    import onnx  # noqa: PLC0415
    from onnx import numpy_helper  # noqa: PLC0415

    out = type(model)()
    out.CopyFrom(model)
    g = out.graph
    _unshare_initializers(g)
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    graph_outputs = {o.name for o in g.output}
    uses = defaultdict(int)
    for n in g.node:
        for i in n.input:
            uses[i] += 1

    def arr(name):
        return numpy_helper.to_array(inits[name])

    def put(name, value):
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))

    def attr(node, name, default):
        return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name),
                    default)

    channels, skipped = {}, {}
    for conv in list(g.node):
        if conv.op_type != "Conv":
            continue
        label = conv.name or conv.output[0]
        w_name = conv.input[1]
        if w_name not in inits or attr(conv, "group", 1) != 1:
            skipped[label] = "grouped/depthwise or weight not constant"
            continue
        # follow the output through channel-wise ops to the layer that consumes the channels
        chain, t, sink, why = [], conv.output[0], None, None
        while True:
            if t in graph_outputs:
                why = "its channels are a graph output"
                break
            users = consumers.get(t, [])
            if len(users) != 1:
                why = f"its output has {len(users)} consumers (a branch or residual)"
                break
            u = users[0]
            if u.op_type in _PASS_THROUGH:
                chain.append(u)
                t = u.output[0]
                continue
            if u.op_type == "Conv" and attr(u, "group", 1) == 1 and u.input[0] == t \
                    and u.input[1] in inits:
                sink = ("conv", u)
            elif u.op_type == "GlobalAveragePool":
                nxt = consumers.get(u.output[0], [])
                if len(nxt) == 1 and nxt[0].op_type == "Flatten":
                    gem = consumers.get(nxt[0].output[0], [])
                    if len(gem) == 1 and gem[0].op_type == "Gemm" and gem[0].input[1] in inits \
                            and attr(gem[0], "transA", 0) == 0:
                        sink = ("gemm", gem[0])
            if sink is None:
                why = f"it feeds {u.op_type}"
            break
        shared = [n for n in [w_name, *conv.input[2:3], *(i for c in chain for i in c.input[1:])]
                  if n in inits and uses[n] > 1]
        if sink is not None and sink[1].input[1] in inits and uses[sink[1].input[1]] > 1:
            shared.append(sink[1].input[1])
        if sink is None or shared:
            skipped[label] = why or f"weights shared with other nodes ({', '.join(shared)})"
            continue
        w = arr(w_name)
        mask = l1_channel_mask(w, sparsity)
        put(w_name, w[mask])
        if len(conv.input) > 2 and conv.input[2] in inits:
            put(conv.input[2], arr(conv.input[2])[mask])
        for c in chain:
            if c.op_type == "BatchNormalization":
                for name in c.input[1:5]:
                    put(name, arr(name)[mask])
        kind, node = sink
        ws = arr(node.input[1])
        if kind == "conv":
            put(node.input[1], ws[:, mask])
        else:  # Gemm after GAP + Flatten: columns (transB) or rows of the weight
            put(node.input[1], ws[:, mask] if attr(node, "transB", 0) else ws[mask])
        channels[label] = (int(w.shape[0]), int(mask.sum()))
    if not channels:
        raise ModelError("no conv channels can be pruned structurally in this model: "
                         + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    del g.value_info[:]  # stale shapes: inferred again from the new weights
    out = onnx.shape_inference.infer_shapes(out)
    onnx.checker.check_model(out)
    before = sum(a for a, _ in channels.values())
    achieved = 1.0 - sum(b for _, b in channels.values()) / before
    return out, PruneReport("l1-structured", sparsity, achieved, count_flops(model),
                            count_flops(out), _param_count(model), _param_count(out), channels,
                            skipped)
