"""Quantization stage (before import): int8 static post-training quantization and fp16.

int8: ONNX Runtime's quantization tool calibrates the model on the user's samples (min-max,
percentile or entropy) and writes a QDQ model with symmetric int8 activations and int8 weights
(per tensor or per output channel). The ``qdq-to-int8`` pass then turns every quantized Conv/MatMul
into int8 x int8 -> int32 compute followed by requantize, so the artifact really computes in int8;
ORT can run the very same QDQ model, which is what the artifact is compared against.

fp16: the ``to-fp16`` pass (TVM's ToMixedPrecision, fp32 accumulation) needs no calibration.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._util import read_npz
from ..errors import InputError, ModelError
from ..artifact.manifest import TensorSpec

MODES = ("int8", "fp16")
METHODS = ("minmax", "percentile", "entropy")
MIN_SAMPLES = 16
# what the qdq-to-int8 pass turns into int8 compute
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Quantization:
    mode: str  # "int8" or "fp16"
    calibration: Path | None = None  # .npz, int8 only
    method: str = "minmax"
    per_channel: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"unknown quantization '{self.mode}'; choose one of: "
                             f"{', '.join(MODES)}")
        if self.method not in METHODS:
            raise InputError(f"unknown calibration method '{self.method}'; choose one of: "
                             f"{', '.join(METHODS)}")
        if self.mode == "int8" and self.calibration is None:
            raise InputError("--quantize int8 needs calibration data: --calibration data.npz "
                             "(one array per model input, samples along the first axis)")
        if self.mode == "fp16" and (self.calibration is not None or self.per_channel):
            raise InputError("--quantize fp16 takes no calibration data and no --per-channel")

    def cache_key(self) -> dict:
        key = {"mode": self.mode, "method": self.method, "per_channel": self.per_channel}
        if self.calibration is not None:
            data = Path(self.calibration).read_bytes()
            key["calibration_sha256"] = hashlib.sha256(data).hexdigest()
        return key

    # what the compile and the tuner call (edgecc.build.compiler.Quantizer): they are handed a
    # Quantization and do not import this package

    def calibration_feeds(self, source, *, shapes: dict[str, tuple[int, ...]]) -> list | None:
        """:func:`calibration_feeds` for this request."""
        return calibration_feeds(self, source, shapes=shapes)

    def to_int8(self, raw: bytes, feeds: list) -> tuple[bytes, dict]:
        """(the calibrated QDQ model's bytes, the manifest's report) (:func:`quantize_int8`)."""
        source, report = quantize_int8(raw, feeds, method=self.method,
                                       per_channel=self.per_channel)
        return source, report.to_dict()


def calibration_feeds(quantize: Quantization | None, source, *,
                      shapes: dict[str, tuple[int, ...]]) -> list | None:
    """Check int8 calibration data against the model's inputs before any work is done and
    return the calibration feeds (None unless ``quantize`` is int8). ``source`` is a
    :class:`edgecc.frontend.ModelSource`."""
    if quantize is None or quantize.mode != "int8":
        return None
    if source.kind != "onnx":
        raise ModelError("--quantize int8 takes an ONNX model (export the torch module to ONNX "
                         "first); fp16 works for both")
    from .. import frontend  # noqa: PLC0415

    proto = frontend.parse_source(source)
    check_quantizable(proto)
    declared = frontend.onnx_inputs(proto)
    resolved = frontend.resolve_input_shapes(declared, shapes)
    specs = [TensorSpec(n, resolved[n], dt) for n, _, dt in declared]
    return load_calibration(quantize.calibration, specs)


@dataclass(frozen=True)
class QuantReport:
    quantized: dict[str, int]  # ONNX op type -> count computed in int8
    fp32: dict[str, int]  # ONNX op type -> count left in fp32 (between requantizations)
    samples: int

    def describe(self) -> str:
        fmt = lambda d: ", ".join(f"{k} x{v}" for k, v in sorted(d.items())) or "none"  # noqa: E731
        return f"int8 compute: {fmt(self.quantized)}; kept in fp32: {fmt(self.fp32)}"

    def to_dict(self) -> dict:
        return {"quantized": dict(self.quantized), "fp32": dict(self.fp32), "samples": self.samples}


def load_calibration(path: str | Path, inputs: Sequence[TensorSpec], *,
                     min_samples: int = MIN_SAMPLES) -> list[dict[str, np.ndarray]]:
    """Calibration feeds from an ``.npz``: for each input of shape (B, *S), an array (N*B, *S)
    named like the input (``x`` is accepted for a single-input model). Returns N feeds."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"calibration data '{p}' not found")
    arrays = read_npz(p, what=f"calibration data '{p}'")
    if len(inputs) == 1 and inputs[0].name not in arrays and "x" in arrays:
        arrays[inputs[0].name] = arrays["x"]
    counts = []
    for spec in inputs:
        if spec.name not in arrays:
            raise InputError(f"calibration data '{p}' has no array for input '{spec.name}' "
                             f"(found: {', '.join(sorted(arrays)) or 'none'})")
        a = arrays[spec.name]
        batch, sample = spec.shape[0], tuple(spec.shape[1:])
        if tuple(a.shape[1:]) != sample or a.ndim != len(spec.shape):
            want = "(N, " + ", ".join(map(str, sample)) + ")"
            raise InputError(f"calibration array '{spec.name}' has shape {tuple(a.shape)}; "
                             f"expected {want} for input {spec.describe()}")
        if str(a.dtype) != spec.dtype:
            raise InputError(f"calibration array '{spec.name}' is {a.dtype}; input "
                             f"'{spec.name}' is {spec.dtype}")
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = np.flatnonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1))
            raise InputError(f"calibration array '{spec.name}' has NaN or Inf values (in "
                             f"{len(bad)} sample(s), the first at index {bad[0]}): "
                             "calibration needs finite inputs")
        if a.shape[0] % batch:
            raise InputError(f"calibration array '{spec.name}' has {a.shape[0]} samples, not a "
                             f"multiple of the model's batch size {batch}")
        counts.append(a.shape[0] // batch)
    n = min(counts)
    if len(set(counts)) > 1:
        raise InputError(f"calibration arrays have different sample counts: {counts}")
    if n < min_samples:
        raise InputError(f"calibration data '{p}' has {n} sample(s); at least {min_samples} are "
                         "needed (a few hundred for percentile or entropy calibration)")
    return [{s.name: np.ascontiguousarray(arrays[s.name][i * s.shape[0]:(i + 1) * s.shape[0]])
             for s in inputs} for i in range(n)]


def check_quantizable(model) -> None:
    ops = Counter(n.op_type for n in model.graph.node)
    if not any(ops.get(op) for op in COMPUTE_OPS):
        raise ModelError("the model has no quantizable operators (int8 compute covers "
                         f"{', '.join(COMPUTE_OPS)}; found only {', '.join(sorted(ops))}): "
                         "nothing to quantize")


def quantize_int8(raw: bytes, feeds: list[dict[str, np.ndarray]], *, method: str = "minmax",
                  per_channel: bool = False) -> tuple[bytes, QuantReport]:
    """Calibrate and quantize an ONNX model (bytes) to a QDQ model (bytes) with ONNX Runtime's
    quantization tool; symmetric int8 activations and weights."""
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import (  # noqa: PLC0415
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    check_quantizable(onnx.load_model_from_string(raw))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory(prefix="edgecc-quant-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("model.onnx", "pre.onnx", "qdq.onnx"))
        src.write_bytes(raw)
        try:
            # shape inference + ORT's graph optimizations (folds BatchNormalization into Conv,
            # so the folded weights are what gets quantized)
            quant_pre_process(str(src), str(pre))
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=calib,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        except Exception as e:  # noqa: BLE001  (ORT's tool raises many types)
            raise ModelError(f"int8 calibration failed in ONNX Runtime's quantization tool: "
                             f"{type(e).__name__}: {e}") from e
        data = out.read_bytes()
    return data, qdq_report(onnx.load_model_from_string(data), samples=len(feeds))


def qdq_report(model, *, samples: int) -> QuantReport:
    """Which compute ops of a QDQ model read only dequantized int8 tensors (-> int8 compute)."""
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    quantized, fp32 = Counter(), Counter()
    for n in model.graph.node:
        if n.op_type in _QDQ:
            continue
        data_inputs = [i for i in n.input[:2] if i]
        if n.op_type in COMPUTE_OPS and data_inputs and all(
                produced_by.get(i) == "DequantizeLinear" for i in data_inputs):
            quantized[n.op_type] += 1
        else:
            fp32[n.op_type] += 1
    return QuantReport(dict(quantized), dict(fp32), samples)
