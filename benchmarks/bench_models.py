#!/usr/bin/env python3
"""edgecc (default compile: shipped tuning logs applied where they match; --untuned for none)
vs ONNX Runtime vs PyTorch eager on the example models, all in one run on this machine: median
latency, ratio to ORT, artifact size, compile time and cache-hit compile time.

    python benchmarks/bench_models.py [--models mobilenetv2,resnet18,mlp,transformer] [--untuned]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import example_onnx, machine, median_ms, ort_session, table


def main() -> int:
    import numpy as np
    import torch
    import zoo

    import edgecc
    from edgecc.runtime import load

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(zoo.MODELS))
    p.add_argument("--target", default="x86_64")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--untuned", action="store_true", help="do not apply the shipped tuning logs")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    work = Path(tempfile.mkdtemp(prefix="edgecc-bench-"))
    os.environ["EDGECC_CACHE_DIR"] = str(work / "cache")
    rows = []
    try:
        for name in args.models.split(","):
            model, example, onnx_path, feed = example_onnx(name, work)

            t = time.perf_counter()
            r = edgecc.compile(onnx_path, target=args.target, output=work / name,
                               use_shipped_logs=not args.untuned)
            compile_s = time.perf_counter() - t
            t = time.perf_counter()
            hit = edgecc.compile(onnx_path, target=args.target, output=work / f"{name}-hit",
                                 use_shipped_logs=not args.untuned)
            hit_s = time.perf_counter() - t
            assert hit.cached
            size = (work / name / "model.so").stat().st_size

            m = load(work / name)
            ec = median_ms(lambda: m.run(feed))

            sess = ort_session(onnx_path, args.threads)
            ref = sess.run(None, feed)[0]
            got = m.run(feed)["output"]
            err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
            ort_ms = median_ms(lambda: sess.run(None, feed))

            with torch.no_grad():
                pt_ms = median_ms(lambda: model(example))

            tuned, total = r.kernels
            rows.append([name, f"{tuned}/{total}", f"{ec:.3f}", f"{ort_ms:.3f}", f"{pt_ms:.3f}",
                         f"{ec / ort_ms:.2f}x", f"{pt_ms / ort_ms:.2f}x",
                         f"{size / 1024:.0f} KiB", f"{compile_s:.2f} s", f"{hit_s * 1e3:.0f} ms",
                         f"{err:.1e}"])
            print(f"done {name}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mode = "untuned" if args.untuned else "default compile (shipped tuning logs)"
    print(f"\nmachine: {machine()}; threads: {args.threads}; target: {args.target}; "
          f"edgecc {mode}")
    print(table(["model", "kernels tuned", "edgecc ms", "ORT ms", "PyTorch ms", "edgecc/ORT", "PyTorch/ORT",
                 "artifact", "compile", "cache hit", "rel err"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
