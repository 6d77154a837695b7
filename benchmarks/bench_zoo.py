#!/usr/bin/env python3
"""The architecture zoo (examples/arch_zoo.py) at its real input sizes: edgecc without any
tuning log, edgecc with every shipped log minus the records of this model's own kernels
(workload-disjoint leave-one-out), ONNX Runtime and PyTorch, timed in interleaved rounds in one
process with a pause between runtimes. Prints per-stage compile times and the share of the
model's operations each kind of schedule covers (tuned record / transferred / rule / default).

    python benchmarks/bench_zoo.py [--models resnet50,mobilenetv2] [--rounds 3] [--small]

Leave-one-out: the model's kernels are listed as the tuner sees them (``tuning_module``), and
every shipped log of every target is copied without the records of those workloads
(``tuning_log.holdout_log``) into a private log library (``EDGECC_TUNING_LOGS``). What is left
can still schedule the model through transfer tuning and the rule, as for a user's model.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import interleaved_ms, machine, ort_session, table


def holdout_library(model_path: Path, input_shape, dest: Path, target: str) -> tuple[Path, int]:
    """A copy of the shipped log library without the records of ``model_path``'s kernels."""
    from edgecc.schedules import tuning_log
    from edgecc.targets import get_target, list_targets
    from edgecc.tuning.tune import kernel_workloads, tuning_module

    _, mod = tuning_module(model_path, get_target(target), input_shapes={"input": input_shape})
    own = set(kernel_workloads(mod).values())
    dropped = 0
    root = tuning_log.shipped_root()
    for t in list_targets():
        src = root / t.name
        if not src.is_dir():
            continue
        for log in sorted(p for p in src.iterdir() if p.is_dir()):
            dropped += tuning_log.holdout_log(log, dest / t.name / log.name, own)
    return dest, dropped


def compile_timed(onnx_path: Path, out: Path, *, target: str, shape, logs: Path | None):
    import edgecc

    stages: dict[str, float] = {}
    env = os.environ.get("EDGECC_TUNING_LOGS")
    if logs is not None:
        os.environ["EDGECC_TUNING_LOGS"] = str(logs)
    try:
        t = time.perf_counter()
        r = edgecc.compile(onnx_path, target=target, output=out, use_cache=False,
                           input_shapes={"input": shape}, use_shipped_logs=logs is not None,
                           isa_variants=False, on_stage=lambda n, s: stages.__setitem__(n, s))
        total = time.perf_counter() - t
    finally:
        if env is None:
            os.environ.pop("EDGECC_TUNING_LOGS", None)
        else:
            os.environ["EDGECC_TUNING_LOGS"] = env
    return r, total, stages


def flop_share(result) -> str:
    flops = (result.manifest.options.get("kernels") or {}).get("flops") or {}
    total = sum(flops.values())
    if not total:
        return "-"
    short = {"tuned": "T", "transferred": "X", "rule": "R", "default": "D"}
    return " ".join(f"{short[k]}{100 * v / total:.0f}" for k, v in flops.items() if v)


def main(argv=None) -> int:
    import arch_zoo

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(n for n in arch_zoo.ARCHS if n != "gru"),
                   help="comma-separated zoo names (gru: TVM's ONNX importer has no GRU)")
    p.add_argument("--target", default="x86_64")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--pause", type=float, default=0.5, help="seconds between runtimes")
    p.add_argument("--small", action="store_true", help="the reduced sizes the tests use")
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    import edgecc

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="edgecc-zoo-"))
    os.environ.setdefault("EDGECC_CACHE_DIR", str(work / "cache"))
    os.environ["EDGECC_USER_TUNING_LOGS"] = str(work / "no-user-logs")  # shipped logs only
    rows, ratios = [], {"default": [], "loo": []}
    for name in args.models.split(","):
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        onnx_path = d / f"{name}.onnx"
        shape = arch_zoo.export_arch(name, onnx_path, small=args.small)
        module, example = arch_zoo.build_arch(name, small=args.small)
        feed = {"input": example.numpy()}
        library, dropped = holdout_library(onnx_path, shape, d / "logs", args.target)
        plain, plain_s, _ = compile_timed(onnx_path, d / "default", target=args.target,
                                          shape=shape, logs=None)
        loo, loo_s, stages = compile_timed(onnx_path, d / "loo", target=args.target,
                                           shape=shape, logs=library)
        sess = ort_session(onnx_path, args.threads)
        ref = sess.run(None, feed)[0]
        runs = {}
        for label, art in (("default", d / "default"), ("loo", d / "loo")):
            m = edgecc.load(art, num_threads=args.threads)
            out = next(iter(m.run(feed).values()))
            err = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))
            if err > 1e-3:
                print(f"warning: {name} {label} differs from ORT (rel {err:.1e})")
            runs[label] = lambda m=m: m.run(feed)
        runs["ORT"] = lambda: sess.run(None, feed)

        def torch_run():
            with torch.no_grad():
                module(example)
        runs["PyTorch"] = torch_run
        per_round = interleaved_ms(runs, rounds=args.rounds, pause_s=args.pause)
        med = {k: statistics.median(v) for k, v in per_round.items()}
        for k in ratios:
            ratios[k].append(med[k] / med["ORT"])
        stage_text = " ".join(f"{k.split()[0]} {v:.0f}" for k, v in stages.items()
                              if v >= 0.5)
        rows.append([name, "x".join(map(str, shape[1:])), f"{plain_s:.0f}", f"{loo_s:.0f}",
                     stage_text, str(dropped), flop_share(loo), f"{med['default']:.2f}",
                     f"{med['loo']:.2f}", f"{med['ORT']:.2f}", f"{med['PyTorch']:.2f}",
                     f"{med['default'] / med['ORT']:.2f}x", f"{med['loo'] / med['ORT']:.2f}x",
                     f"{med['PyTorch'] / med['ORT']:.2f}x"])
        print(" | ".join(rows[-1]), flush=True)
    geo = {k: math.exp(statistics.mean(math.log(x) for x in v)) for k, v in ratios.items() if v}
    print(f"\nzoo, {args.rounds} interleaved rounds, {args.threads} threads, target "
          f"{args.target} (no ISA variants); {machine()}")
    print("FLOP share (leave-one-out build): T tuned record, X transferred, R rule, D default")
    print(table(["model", "input", "compile s default", "compile s LOO", "LOO stages s",
                 "held-out records", "FLOP share %", "default ms", "LOO ms", "ORT ms",
                 "PyTorch ms", "default/ORT", "LOO/ORT", "PyTorch/ORT"], rows))
    print(f"geomean vs ORT: default {geo.get('default', 0):.2f}x, leave-one-out "
          f"{geo.get('loo', 0):.2f}x; worst LOO {max(ratios['loo'], default=0):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
