"""The conformance floor on a fixed sample of ONNX's backend node test cases: every case TVM's
default pipeline passes, edgecc passes too (benchmarks/bench_conformance.py runs all of them)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_conformance as conformance  # noqa: E402

SAMPLE = 48  # every ~39th case of the sorted 1,884: ~1 minute on 2 cores


def test_edgecc_passes_every_sampled_onnx_node_case_tvm_passes():
    names = conformance.sample_names(list(conformance.collect_cases()), SAMPLE)
    results = conformance.run_cases(names, backends=("edgecc", "tvm"), jobs=2, timeout=180)
    tvm_passes = [n for n in names if results[n]["tvm"] == conformance.PASS]
    assert len(tvm_passes) >= SAMPLE // 3  # the sample has real cases in it
    lost = {n: results[n]["edgecc"] for n in tvm_passes
            if results[n]["edgecc"] != conformance.PASS}
    assert lost == {}
