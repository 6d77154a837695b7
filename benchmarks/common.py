"""Helpers shared by the benchmark scripts: timing with one method for every runtime."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))


def median_ms(fn, *, warmup: int = 5, repeat: int = 50, min_seconds: float = 1.0) -> float:
    """Median wall time of ``fn()`` in ms: at least ``repeat`` calls and ``min_seconds``."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 20 * repeat:
            break
    return statistics.median(times) * 1e3


def interleaved_ms(runs: dict, *, rounds: int = 3, on_round=None,
                   pause_s: float = 0.0) -> dict[str, list[float]]:
    """Per-round median latencies (ms) of every ``runs[label]()``: round r times each of them
    once, in turn, so a machine whose speed drifts (a noisy VM) slows every variant alike.
    Compare the medians over rounds (:func:`statistics.median` of each list). ``pause_s``
    between runtimes lets one's thread pool stop spinning before the next is timed."""
    per_round: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        for label, fn in runs.items():
            if pause_s:
                time.sleep(pause_s)
            per_round[label].append(median_ms(fn, repeat=50, min_seconds=0.5))
        if on_round is not None:
            on_round(r, per_round)
    return per_round


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def example_onnx(name: str, work: Path):
    """The seeded example model ``name``, its example input, its ONNX file in ``work`` and the
    input feed."""
    import zoo

    model, example = zoo.build(name)
    onnx_path = work / f"{name}.onnx"
    zoo.export_onnx(model, example, onnx_path)
    return model, example, onnx_path, {"input": example.numpy()}


def ort_session(onnx_path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
