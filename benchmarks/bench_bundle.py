#!/usr/bin/env python3
"""Device-side footprint of a bundle per architecture (loader + runtime libraries + model.so),
and cold start on x86_64: process start -> first inference done, for the native edgecc-run vs
the Python runtime (edgecc.runtime) vs ONNX Runtime's Python API, same model, same run.

    python benchmarks/bench_bundle.py [--model mobilenetv2] [--runs 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import example_onnx, machine, table

PY_EDGECC = ("import sys; sys.modules['torch'] = None\n"  # a device has no torch
             "import numpy as np, edgecc.runtime as rt\n"
             "m = rt.load(sys.argv[1]); m.run(input=np.load(sys.argv[2]))\n")
PY_ORT = ("import sys, numpy as np, onnxruntime as ort\n"
          "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
          "s.run(None, {'input': np.load(sys.argv[2])})\n")


def cold_ms(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> int:
    import numpy as np

    import edgecc
    from edgecc.deploy.package import package_artifact

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgecc-bundle-"))
    try:
        _, example, onnx_path, _ = example_onnx(args.model, work)
        np.save(work / "in.npy", example.numpy())
        rows = []
        bundles = {}
        for target in ("x86_64", "rpi4"):
            edgecc.compile(onnx_path, target=target, output=work / target, use_cache=False)
            b = package_artifact(work / target, work / f"bundle-{target}", log=lambda m: None)
            bundles[target] = b.path
            sizes = dict(b.files)
            runtime = sizes["lib/libtvm_runtime.so"] + sizes["lib/libtvm_ffi.so"]
            rows.append([target, f"{sizes['bin/edgecc-run'] / 1024:.0f} KiB",
                         f"{runtime / 2**20:.2f} MiB", f"{sizes['model.so'] / 1024:.0f} KiB",
                         f"{b.total_bytes / 2**20:.2f} MiB"])
        print(f"machine: {machine()}; model: {args.model} (stripped bundles)")
        print(table(["arch (target)", "edgecc-run", "TVM runtime libs", "model.so", "total"],
                    rows))

        x86 = bundles["x86_64"]
        cold = [
            ["edgecc-run (native)", cold_ms([str(x86 / "bin/edgecc-run"), str(x86), "--input",
                                             f"input={work / 'in.npy'}"], args.runs)],
            ["edgecc.runtime (Python, no torch)",
             cold_ms([sys.executable, "-c", PY_EDGECC, str(work / "x86_64"),
                      str(work / "in.npy")], args.runs)],
            ["onnxruntime (Python)", cold_ms([sys.executable, "-c", PY_ORT, str(onnx_path),
                                              str(work / "in.npy")], args.runs)],
        ]
        base = cold[2][1]
        print(f"\ncold start on x86_64, process start -> first inference done, median of "
              f"{args.runs}")
        print(table(["loader", "ms", "ratio to ORT"],
                    [[n, f"{ms:.0f}", f"{ms / base:.2f}x"] for n, ms in cold]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
