"""Accuracy of a classifier, compiled or not, on labelled data (one sample per batch slot).

Used by ``edgecc report``, the benchmarks and the accuracy gates in the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .datasets import Labelled


def _batches(x: np.ndarray, batch: int):
    """Split ``x`` into model-sized batches; the last one is padded with zeros."""
    n = x.shape[0]
    for i in range(0, n, batch):
        chunk = x[i:i + batch]
        if chunk.shape[0] < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - chunk.shape[0],) + x.shape[1:],
                                                    x.dtype)])
        yield chunk


def predict_artifact(artifact: str | Path, x: np.ndarray) -> np.ndarray:
    """First output of a compiled artifact for every sample of ``x`` (N, ...)."""
    from ..runtime import load  # noqa: PLC0415

    model = load(artifact)
    spec, out = model.manifest.inputs[0], model.manifest.outputs[0]
    batch = spec.shape[0]
    outs = [model.run({spec.name: b.astype(spec.dtype)})[out.name] for b in _batches(x, batch)]
    return np.concatenate(outs)[: x.shape[0]]


def predict_onnx(model: str | Path | bytes, x: np.ndarray, *,
                 optimize: bool = True) -> np.ndarray:
    """First output of an ONNX model under ONNX Runtime (CPU) for every sample of ``x``.
    ``optimize=False`` runs the graph as written, without ORT's fused kernels: for a QDQ model
    that is the exact QuantizeLinear/DequantizeLinear arithmetic (ORT's int8 kernels saturate
    int16 sums on CPUs without VNNI and drift from it by up to tens of output quanta)."""
    import onnxruntime as ort  # noqa: PLC0415

    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1
    outs = [sess.run(None, {inp.name: b})[0] for b in _batches(x, batch)]
    return np.concatenate(outs)[: x.shape[0]]


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def accuracy(model: str | Path, data: Labelled) -> float:
    """Top-1 accuracy of an artifact directory or an ONNX file on ``data``."""
    p = Path(model)
    logits = predict_artifact(p, data.x) if p.is_dir() else predict_onnx(p, data.x)
    return top1(logits, data.y)
