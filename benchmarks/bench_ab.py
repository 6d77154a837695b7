#!/usr/bin/env python3
"""Interleaved A/B: compiled artifacts of one example model against ONNX Runtime and PyTorch,
timed in alternating rounds in one process (round r times every variant once, in turn), so a
noisy machine slows all of them alike. Prints the median of the per-round medians and the ratio
to ORT's.

    python benchmarks/bench_ab.py resnet18 shipped=/tmp/r18 nchw=/tmp/r18-old [--rounds 5]

Each ``LABEL=DIR`` is an artifact directory written by ``edgecc compile`` for this model (any
target this machine runs); ``LABEL=DIR@BUILD`` runs that build of it (``@x86_64``: the AVX2
build of an x86_64 artifact, which otherwise runs its AVX-512 build on CPUs that have AVX-512).
``--no-torch`` leaves PyTorch out. ``--arch`` takes the model from the architecture zoo
(examples/arch_zoo.py) at its real input size instead:

    python benchmarks/bench_ab.py --arch resnet50 before=/tmp/r50-old after=/tmp/r50-new
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import example_onnx, interleaved_ms, machine, ort_session, table


def _variant(text: str) -> tuple[str, Path, str | None]:
    label, sep, directory = text.partition("=")
    directory, at, build = directory.partition("@")
    if not sep or not label or not directory or (at and not build):
        raise argparse.ArgumentTypeError(f"expected LABEL=DIR[@BUILD], got {text!r}")
    return label, Path(directory), build or None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="example model name (examples/zoo.py), e.g. resnet18")
    p.add_argument("artifacts", nargs="+", type=_variant, metavar="LABEL=DIR[@BUILD]")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--arch", action="store_true",
                   help="MODEL is an architecture-zoo name (examples/arch_zoo.py), real size")
    p.add_argument("--pause", type=float, default=0.5,
                   help="seconds between runtimes (ORT's pool spins after a run)")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    import edgecc

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.arch:
            import arch_zoo

            onnx_path = Path(tmp) / f"{args.model}.onnx"
            arch_zoo.export_arch(args.model, onnx_path)
            model, example = arch_zoo.build_arch(args.model)
            feed = {"input": example.numpy()}
        else:
            model, example, onnx_path, feed = example_onnx(args.model, Path(tmp))
        sess = ort_session(onnx_path, args.threads)
        reference = sess.run(None, feed)[0]
        runs = {}
        for label, directory, build in args.artifacts:
            m = edgecc.load(directory, num_threads=args.threads, build=build)
            print(f"{label}: {directory}, {m.build} build")
            out = next(iter(m.run(feed).values()))
            np.testing.assert_allclose(out, reference, rtol=1e-3, atol=1e-3,
                                       err_msg=f"{label} ({directory}) differs from ORT")
            runs[label] = lambda m=m: m.run(feed)
        runs["ORT"] = lambda: sess.run(None, feed)
        if not args.no_torch:
            def torch_run():
                with torch.no_grad():
                    model(example)
            runs["PyTorch"] = torch_run

        per_round = interleaved_ms(runs, rounds=args.rounds, pause_s=args.pause,
                                   on_round=lambda r, res: print(
            f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k} {v[-1]:.3f}" for k, v in res.items()), flush=True))

    ort = statistics.median(per_round["ORT"])
    rows = []
    for label, times in per_round.items():
        med = statistics.median(times)
        rows.append([label, f"{med:.3f}", f"{med / ort:.2f}x", f"{min(times):.3f}",
                     f"{max(times):.3f}"])
    print(f"\n{args.model}, {args.rounds} interleaved rounds, {args.threads} threads; {machine()}")
    print(table(["variant", "median ms", "vs ORT", "fastest round", "slowest round"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
