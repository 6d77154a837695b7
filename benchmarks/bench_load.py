#!/usr/bin/env python3
"""Latency under load: edgecc and ONNX Runtime p50/p99 on an idle CPU, beside one and two busy
processes (pure-Python spin loops this script starts and stops), and with two threads of this
process each running the model (what the pipeline runner does).

Each cell times single runs until it has ``--runs`` of them (at most ``--seconds``), edgecc and
ORT one after the other with a pause between them (ORT's pool spins after a run); the table
gives the median over ``--repeats`` repeats of each cell's p50 and p99.

    python3 benchmarks/bench_load.py mobilenetv2 [--artifact DIR] [--runs 2000] [--repeats 3]

Thread-pool knobs are read once per process by TVM, so each setting is its own run of this
script: ``EDGECC_BIND_THREADS=1 python3 benchmarks/bench_load.py ...`` times the old default
(workers pinned to cores). ``--idle-ab ROUNDS`` compares the defaults with the old ones on an
idle CPU instead: each round runs one child process per setting (the order alternates), each
child times ``--runs`` edgecc runs after ``--settle`` seconds, and the table gives the median
p50/p99 per setting and the median of the per-round p50 ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import example_onnx, machine, ort_session, table

SPIN = "while True:\n    pass\n"
LOADS = ("idle", "1 busy process", "2 busy processes", "2 threads")
# the idle A/B: the defaults against those before issue 18 (workers pinned, no thread guard)
SETTINGS = {"now (unpinned, guard)": {},
            "before (pinned, no guard)": {"EDGECC_BIND_THREADS": "1",
                                          "EDGECC_ADAPTIVE_THREADS": "0"}}


def _percentiles(times: list[float]) -> tuple[float, float]:
    s = sorted(times)
    return s[len(s) // 2] * 1e3, s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3


def _time(fn, *, runs: int, seconds: float, settle: float = 0.0) -> list[float]:
    start = time.perf_counter()
    while time.perf_counter() - start < settle or time.perf_counter() - start < 0.01:
        fn()
    times, start = [], time.perf_counter()
    while len(times) < runs and time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _two_threads(make, *, runs: int, seconds: float, settle: float) -> list[float]:
    """Two threads, each with its own runner from ``make()``, timing runs at the same time."""
    runners = [make(), make()]
    out: list[list[float]] = [[], []]
    threads = [threading.Thread(target=lambda i=i: out[i].extend(
        _time(runners[i], runs=runs // 2, seconds=seconds, settle=settle))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out[0] + out[1]


def _busy(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
    time.sleep(0.5)  # let the scheduler see them
    return procs


def _stop(procs) -> None:
    for p in procs:
        p.kill()
        p.wait()


def _idle_child(artifact: Path, feed_path: Path, *, threads: int, runs: int,
                settle: float) -> int:
    """One side of the idle A/B: time ``runs`` runs in this process, print "p50 p99" (ms)."""
    import numpy as np

    import edgecc

    with np.load(feed_path) as data:
        feed = {k: data[k] for k in data.files}
    model = edgecc.load(artifact, num_threads=threads)
    times = _time(lambda: model.run(feed), runs=runs, seconds=10 * runs, settle=settle)
    print("%.6f %.6f" % _percentiles(times))
    return 0


def _idle_ab(args, artifact: Path, feed: dict, tmp: Path) -> int:
    import numpy as np

    feed_path = tmp / "feed.npz"
    np.savez(feed_path, **feed)
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in SETTINGS}
    names = list(SETTINGS)
    for rnd in range(args.idle_ab):
        for name in (names if rnd % 2 == 0 else names[::-1]):
            env = {k: v for k, v in os.environ.items()
                   if k not in ("EDGECC_BIND_THREADS", "EDGECC_ADAPTIVE_THREADS",
                                "TVM_BIND_THREADS")}
            env.update(SETTINGS[name])
            out = subprocess.run(
                [sys.executable, __file__, args.model, "--idle-child", str(artifact),
                 str(feed_path), "--threads", str(args.threads), "--runs", str(args.runs),
                 "--settle", str(args.settle)], env=env, check=True, capture_output=True,
                text=True).stdout.split()
            got[name].append((float(out[0]), float(out[1])))
            time.sleep(args.pause)
        print(f"round {rnd + 1}/{args.idle_ab}: " + ", ".join(
            f"{n} p50 {v[-1][0]:.3f} p99 {v[-1][1]:.3f}" for n, v in got.items()),
            file=sys.stderr, flush=True)
    now, before = (got[n] for n in names)
    ratios = [a[0] / b[0] for a, b in zip(now, before, strict=True)]
    print(f"\n{args.model}, idle, {args.threads} threads, {args.idle_ab} alternating rounds of "
          f"{args.runs} runs per setting, one process each; {machine()}")
    print(table(["setting", "p50 ms (median)", "p99 ms (median)"],
                [[n, f"{statistics.median(a for a, _ in v):.3f}",
                  f"{statistics.median(b for _, b in v):.3f}"] for n, v in got.items()]))
    print(f"p50 now / before, median of per-round ratios: {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="example model name (examples/zoo.py), e.g. mobilenetv2")
    p.add_argument("--artifact", type=Path, help="an edgecc artifact of the model (default: "
                   "compile it with the shipped logs)")
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pause", type=float, default=1.0, help="seconds between runtimes")
    p.add_argument("--settle", type=float, default=2.5, help="untimed seconds of runs at the "
                   "start of each cell (edgecc's thread guard follows a change of load within "
                   "2 s; ORT gets the same)")
    p.add_argument("--idle-ab", type=int, metavar="ROUNDS", default=0,
                   help="compare the defaults with the old ones (pinned, no guard) on an idle "
                   "CPU in ROUNDS alternating rounds, a child process per setting")
    p.add_argument("--idle-child", nargs=2, type=Path, metavar=("ARTIFACT", "FEED"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.idle_child:
        return _idle_child(*args.idle_child, threads=args.threads, runs=args.runs,
                           settle=args.settle)

    import edgecc

    with tempfile.TemporaryDirectory() as tmp:
        _, _, onnx_path, feed = example_onnx(args.model, Path(tmp))
        artifact = args.artifact
        if artifact is None:
            artifact = Path(tmp) / "art"
            edgecc.compile(onnx_path, output=artifact)
        if args.idle_ab:
            return _idle_ab(args, artifact, feed, Path(tmp))
        makers = {
            "edgecc": lambda: (lambda m=edgecc.load(artifact, num_threads=args.threads):
                               m.run(feed)),
            "ORT": lambda: (lambda s=ort_session(onnx_path, args.threads):
                            s.run(None, feed)),
        }
        single = {k: make() for k, make in makers.items()}
        cells: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for rep in range(args.repeats):
            for load in LOADS:
                procs = _busy({"1 busy process": 1, "2 busy processes": 2}.get(load, 0))
                try:
                    for name, fn in single.items():
                        time.sleep(args.pause)
                        times = (_two_threads(makers[name], runs=args.runs,
                                              seconds=args.seconds, settle=args.settle)
                                 if load == "2 threads" else
                                 _time(fn, runs=args.runs, seconds=args.seconds,
                                       settle=args.settle))
                        cells.setdefault((load, name), []).append(_percentiles(times))
                finally:
                    _stop(procs)
                print(f"repeat {rep + 1}/{args.repeats} {load}: " + ", ".join(
                    f"{n} p50 {cells[(load, n)][-1][0]:.3f} p99 {cells[(load, n)][-1][1]:.3f}"
                    for n in makers), file=sys.stderr, flush=True)

    med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v))
           for k, v in cells.items()}
    idle_p50 = med[("idle", "edgecc")][0]
    rows = []
    for load in LOADS:
        e, o = med[(load, "edgecc")], med[(load, "ORT")]
        rows.append([load, f"{e[0]:.3f}", f"{e[1]:.3f}", f"{o[0]:.3f}", f"{o[1]:.3f}",
                     f"{e[0] / o[0]:.2f}x", f"{e[1] / o[1]:.2f}x", f"{e[1] / idle_p50:.1f}x"])
    knobs = {k: os.environ[k] for k in ("EDGECC_ADAPTIVE_THREADS", "EDGECC_BIND_THREADS",
                                        "TVM_BIND_THREADS", "TVM_NUM_THREADS")
             if k in os.environ}
    print(f"\n{args.model}, {args.threads} threads, median of {args.repeats} repeats, cells of "
          f"{args.runs} runs (at most {args.seconds:.0f} s); {knobs}; {machine()}")
    print(table(["load", "edgecc p50", "edgecc p99", "ORT p50", "ORT p99", "p50 vs ORT",
                 "p99 vs ORT", "edgecc p99 / idle p50"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
