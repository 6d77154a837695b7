#!/usr/bin/env python3
"""Tuning figures on the example models, one run, same machine: edgecc with neither logs nor
rule tiling (TVM's default schedules: naive loops for convs), edgecc with no logs at all (convs
and matmuls rule-tiled), edgecc never tuned (every shipped log of every target *except* the
model's own: rule tiling, then transfer tuning for the rest), edgecc with the shipped tuning
logs (tuning_logs/<target>/), edgecc after a fresh tuning budget (its transfer seeds drawn from
the other models' logs only), ONNX Runtime and PyTorch eager:
median latency and ratio to ORT; tuning wall time per 100 trials.

    python benchmarks/bench_tuning.py [--models mlp,transformer] [--trials 16] [--target x86_64]
                                      [--no-isa-variants]

--trials 0 skips the fresh tuning column (tuning all four models at 16 trials/task takes
about 15 minutes on 2 cores). x86_64 artifacts carry an AVX-512 build too, which runs on CPUs
that have AVX-512; --no-isa-variants times the AVX2 build alone (the footer says which ran).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from common import example_onnx, interleaved_ms, machine, ort_session, table


def _logs_without(name: str, dest: Path) -> Path:
    """A copy (symlinks) of the shipped tuning_logs/ tree without any log named ``name``."""
    from edgecc.schedules.tuning_log import shipped_root

    for target_dir in shipped_root().iterdir():
        if target_dir.is_dir():
            (dest / target_dir.name).mkdir(parents=True)
            for log in target_dir.iterdir():
                if log.is_dir() and log.name != name:
                    (dest / target_dir.name / log.name).symlink_to(log.resolve())
    return dest


@contextlib.contextmanager
def _log_library(root: Path):
    """Use ``root`` as the shipped tuning logs (EDGECC_TUNING_LOGS) inside the block."""
    os.environ["EDGECC_TUNING_LOGS"] = str(root)
    try:
        yield
    finally:
        del os.environ["EDGECC_TUNING_LOGS"]


def main() -> int:
    import torch
    import zoo

    import edgecc
    from edgecc.runtime import load
    from edgecc.tuning.tune import tune_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(zoo.MODELS))
    p.add_argument("--target", default="x86_64")
    p.add_argument("--trials", type=int, default=0, help="fresh tuning budget per task")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved timing rounds (every variant, ORT and PyTorch in turn)")
    p.add_argument("--no-isa-variants", dest="isa_variants", action="store_false",
                   help="compile for the target only (x86_64: no AVX-512 build beside AVX2)")
    p.add_argument("--no-transfer-seeds", dest="transfer_seeds", action="store_false",
                   help="fresh tuning without transfer seeds (random first population)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    work = Path(tempfile.mkdtemp(prefix="edgecc-bench-tune-"))
    os.environ["EDGECC_CACHE_DIR"] = str(work / "cache")
    rows = []
    ran: set[str] = set()
    build = functools.partial(edgecc.compile, target=args.target, isa_variants=args.isa_variants)
    try:
        for name in args.models.split(","):
            model, example, onnx_path, feed = example_onnx(name, work)
            variants = {}
            r = build(onnx_path, output=work / f"{name}-naive", use_shipped_logs=False,
                      rule_schedule=False)
            variants["naive"] = (work / f"{name}-naive", r.kernels)
            r = build(onnx_path, output=work / f"{name}-untuned", use_shipped_logs=False)
            variants["untuned"] = (work / f"{name}-untuned", r.kernels)
            # the shipped logs of every target minus this model's own: a never-tuned model
            others = _logs_without(name, work / f"logs-{name}")
            with _log_library(others):
                r = build(onnx_path, output=work / f"{name}-transfer")
            variants["transfer"] = (work / f"{name}-transfer", r.kernels)
            borrowed = f"{r.rule_tiled} + {r.transferred}"
            r = build(onnx_path, output=work / f"{name}-shipped")
            variants["shipped"] = (work / f"{name}-shipped", r.kernels)
            per100 = None
            if args.trials:
                with _log_library(others):  # transfer seeds from the other models' logs only
                    t = tune_model(onnx_path, target=args.target, trials_per_task=args.trials,
                                   log_dir=work / f"log-{name}", on_progress=None,
                                   transfer_seeds=args.transfer_seeds)
                per100 = t.seconds / max(t.trials_run + t.seeded, 1) * 100
                r = build(onnx_path, output=work / f"{name}-tuned",
                          tuning_logs=[work / f"log-{name}"], use_shipped_logs=False)
                variants["tuned"] = (work / f"{name}-tuned", r.kernels)
            loaded = {key: load(path) for key, (path, _) in variants.items()}
            ran.update(f"{key}: {m.build}" for key, m in loaded.items())
            runs = {key: (lambda m=m: m.run(feed)) for key, m in loaded.items()}
            sess = ort_session(onnx_path, args.threads)
            runs["ort"] = lambda: sess.run(None, feed)

            def torch_run():
                with torch.no_grad():
                    model(example)
            runs["torch"] = torch_run
            ms = {k: statistics.median(v)
                  for k, v in interleaved_ms(runs, rounds=args.rounds).items()}
            ort_ms, pt_ms = ms.pop("ort"), ms.pop("torch")
            cell = lambda key: (f"{ms[key]:.3f} ({ms[key] / ort_ms:.2f}x)"  # noqa: E731
                                if key in ms else "-")
            tuned_k, total_k = variants["shipped"][1]
            rows.append([name, cell("naive"), cell("untuned"), cell("transfer"),
                         f"{borrowed} / {total_k}",
                         cell("shipped"), f"{tuned_k}/{total_k}",
                         cell("tuned"), f"{ort_ms:.3f}", f"{pt_ms:.3f} ({pt_ms / ort_ms:.2f}x)",
                         f"{per100:.0f} s" if per100 else "-"])
            print(f"done {name}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmachine: {machine()}; threads {args.threads}; target {args.target}; "
          f"ms = median over {args.rounds} interleaved rounds of the median latency, "
          "(ratio to ONNX Runtime); builds run: " + ", ".join(sorted(ran)))
    tuned_hdr = (f"tuned {args.trials}/task{'' if args.transfer_seeds else ' (no seeds)'}"
                 if args.trials else "tuned (skipped)")
    print(table(["model", "TVM default (no logs, no rule)", "no logs (rule-tiled)",
                 "never tuned (other models' logs)", "kernels rule-tiled + transferred",
                 "shipped logs", "kernels tuned", tuned_hdr, "ORT",
                 "PyTorch", "tune s/100 trials"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
