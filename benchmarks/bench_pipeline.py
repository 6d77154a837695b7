#!/usr/bin/env python3
"""Model parallelism benchmark: the example CNNs cut into 1, 2 and 3 stages, each stage on its own
`edgecc-run serve` device (x86_64, 1 thread each) behind a tracker on 127.0.0.1.

Prints throughput (items/s while streaming), single-item latency, bytes sent between stages per
inference and the cost model's balance (max stage / mean stage FLOPs), with ONNX Runtime (1
thread, in process) in the same run for scale. On this 2-core machine 3 single-thread devices
share 2 cores and the host, so 3 stages show the protocol's overheads more than its gains.

    python benchmarks/bench_pipeline.py [--models mobilenetv2,resnet18] [--items 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import example_onnx, machine, median_ms, ort_session, table  # noqa: E402


def main() -> int:
    import numpy as np

    from edgecc.devices.localcluster import device_cluster, native_server
    from edgecc.parallel.partition import partition
    from edgecc.parallel.pipeline import Devices, run_pipeline

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilenetv2,resnet18")
    p.add_argument("--items", type=int, default=64, help="items streamed per configuration")
    p.add_argument("--stages", default="1,2,3")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgecc-pipe-"))
    os.environ["EDGECC_CACHE_DIR"] = str(work / "cache")
    stage_counts = [int(s) for s in args.stages.split(",")]
    rows = []
    keys = [f"dev{i}" for i in range(max(stage_counts))]
    try:
        with device_cluster({k: native_server("x86_64", threads=1) for k in keys}) as cluster:
            for name in args.models.split(","):
                _, example, onnx_path, feed = example_onnx(name, work)
                rng = np.random.default_rng(0)
                items = [{"input": rng.standard_normal(example.shape).astype("float32")}
                         for _ in range(args.items)]
                sess = ort_session(onnx_path, 1)
                ort_ms = median_ms(lambda: sess.run(None, feed))
                rows.append([name, "ORT, 1 thread, in process", "-", "-",
                             f"{1e3 / ort_ms:.0f}", f"{ort_ms:.2f}", "-", "-"])
                base = None
                for n in stage_counts:
                    pipe = partition(onnx_path, stages=n, output=work / f"{name}-{n}",
                                     log=lambda _m: None)
                    devices = Devices.parse(f"{cluster.tracker}:{','.join(keys[:n])}")
                    run = run_pipeline(work / f"{name}-{n}", items, devices=devices)
                    single = [run_pipeline(work / f"{name}-{n}", items[:1], devices=devices,
                                           warmup=1 if i == 0 else 0).latencies_ms[0]
                              for i in range(5)]
                    ref = sess.run(None, items[-1])[0]
                    err = float(np.abs(run.outputs[-1]["output"] - ref).max() / np.abs(ref).max())
                    assert err <= 1e-4, err
                    base = base or run.throughput
                    rows.append([name, f"{n} stage(s) on {n} RPC device(s)",
                                 f"{pipe.balance:.2f}",
                                 f"{pipe.bytes_between_stages / 1024:.0f} KiB",
                                 f"{run.throughput:.0f}", f"{statistics.median(single):.2f}",
                                 f"{run.throughput / base:.2f}x", f"{err:.1e}"])
                    print(f"done {name} {n}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmachine: {machine()}; devices: edgecc-run serve x86_64, 1 thread each, "
          f"127.0.0.1; {args.items} items streamed per row")
    print(table(["model", "configuration", "balance", "bytes between stages", "items/s",
                 "single-item ms", "throughput vs 1 stage", "rel err"], rows))
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    print(f"({time.perf_counter() - t0:.0f} s)")
    raise SystemExit(rc)
