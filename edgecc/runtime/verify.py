"""``edgecc verify``: the same random inputs through ONNX Runtime and through the artifact."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, VerificationError
from .model import load, random_inputs, runnable_builds

DEFAULT_RTOL = 1e-4


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float  # max |a - b| / max |reference|: relative to the output's scale
    build: str = ""  # which of the artifact's builds ran (x86_64, x86_64-avx512)


@dataclass(frozen=True)
class VerifyReport:
    diffs: tuple[OutputDiff, ...]
    rtol: float
    not_run: tuple[str, ...] = ()  # builds this CPU cannot run, with the reason

    @property
    def passed(self) -> bool:
        return all(d.max_rel <= self.rtol for d in self.diffs)

    def format(self) -> str:
        several = len({d.build for d in self.diffs}) > 1
        rows = [f"  {f'[{d.build}] ' if several else ''}{d.name}: max abs {d.max_abs:.3e}  "
                f"max rel {d.max_rel:.3e}" for d in self.diffs]
        rows += [f"  not run: {why}" for why in self.not_run]
        verdict = "OK" if self.passed else "FAILED"
        return "\n".join(rows + [f"{verdict} (tolerance: rel <= {self.rtol:g})"])


def compare(name: str, got: np.ndarray, ref: np.ndarray) -> OutputDiff:
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise VerificationError(f"output {name!r}: shape {got.shape} differs from the "
                                f"reference {ref.shape}")
    max_abs = float(np.max(np.abs(got - ref))) if got.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return OutputDiff(name, max_abs, max_abs / scale if scale > 0 else max_abs)


def onnxruntime_outputs(model: str | os.PathLike | Any,
                        inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort  # noqa: PLC0415

    if isinstance(model, str | os.PathLike):
        if not Path(model).is_file():
            raise ModelError(f"model file '{model}' not found")
        data = Path(model).read_bytes()
    else:
        data = model.SerializeToString()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types for bad models
        raise ModelError(f"ONNX Runtime cannot load the reference model: {e}") from None
    return sess.run(None, dict(inputs))


def verify_artifact(artifact: str | os.PathLike, model: str | os.PathLike | Any, *,
                    rtol: float = DEFAULT_RTOL, seed: int = 0,
                    inputs: Mapping[str, np.ndarray] | None = None) -> VerifyReport:
    """Every build of the artifact this CPU can run (an x86_64 artifact's AVX2 and AVX-512
    builds on an AVX-512 machine) against ONNX Runtime, on the same inputs."""
    first = load(artifact)
    feed = dict(inputs) if inputs is not None else random_inputs(first.inputs, seed=seed)
    ref = onnxruntime_outputs(model, feed)
    runnable, not_run = runnable_builds(first.manifest)
    diffs = []
    for build in runnable:
        m = first if build == first.build else load(artifact, build=build)
        got = m.run(feed)
        if len(ref) != len(got):
            raise VerificationError(f"the artifact has {len(got)} outputs, the ONNX model "
                                    f"{len(ref)}")
        diffs += [replace(compare(spec.name, got[spec.name], r), build=build)
                  for spec, r in zip(m.outputs, ref, strict=True)]
    return VerifyReport(diffs=tuple(diffs), rtol=rtol, not_run=not_run)
