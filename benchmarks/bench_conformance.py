"""Op coverage on ONNX's own backend node test cases (``onnx.backend.test.case.node``).

Every case runs through three backends: edgecc (``edgecc.compile`` for x86_64 + ``edgecc.load``),
TVM's default Relax pipeline (``from_onnx`` -> ``tvm.compile`` -> VM) and ONNX Runtime, and its
outputs are compared with the case's expected outputs (the case's rtol/atol, dtype checked, as
ONNX's backend test runner does). TVM's pass count is the floor: every case TVM passes and edgecc
does not is printed with edgecc's error.

Each (case, backend) runs in a worker process with a time limit, restarted after a crash or a
time-out, so one bad case cannot stop the run.

    python3 benchmarks/bench_conformance.py                 # all 1,884 cases, 2 workers (~1 h)
    python3 benchmarks/bench_conformance.py --match gelu --jobs 1
    python3 benchmarks/bench_conformance.py --sample 60     # a fixed, evenly spread sample
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

BACKENDS = ("edgecc", "tvm", "ort")
PASS = "pass"

# Cases whose output shape depends on the values of an input (NonZero, Unique, TopK with a
# tensor k, ...): a static-shape compiler cannot run them without dynamic shapes.
DATA_DEPENDENT = "needs dynamic shapes"


def collect_cases() -> dict:
    """name -> onnx TestCase, every node case ONNX ships."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from onnx.backend.test.case import node  # noqa: PLC0415

        return {c.name: c for c in node.collect_testcases(None)}


def sample_names(names: list[str], n: int) -> list[str]:
    """``n`` names spread evenly over the sorted list (the same ones every time)."""
    names = sorted(names)
    if n >= len(names):
        return names
    step = len(names) / n
    return [names[int(i * step)] for i in range(n)]


# ------------------------------------------------------------------------------- one case


def _feeds(case):
    init = {t.name for t in case.model.graph.initializer}
    in_names = [vi.name for vi in case.model.graph.input if vi.name not in init]
    inputs, expected = case.data_sets[0]
    return in_names, [_array(a) for a in inputs], [_array(a) for a in expected]


def _array(a):
    """A case's value as numpy: some cases give TensorProtos (bfloat16, float8, int4 data)."""
    if type(a).__name__ == "TensorProto":
        from onnx import numpy_helper  # noqa: PLC0415

        return numpy_helper.to_array(a)
    return a


def _compare(got: list, expected: list, case) -> str:
    if len(got) != len(expected):
        return f"mismatch: {len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if not isinstance(e, np.ndarray):
            return f"mismatch: output #{i} is a {type(e).__name__} (sequence/optional outputs)"
        g = np.asarray(g)
        if g.dtype != e.dtype:
            return f"mismatch: output #{i} dtype {g.dtype}, expected {e.dtype}"
        if g.shape != e.shape:
            return f"mismatch: output #{i} shape {g.shape}, expected {e.shape}"
        try:
            if e.dtype.kind in "fc":
                np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol)
            else:
                np.testing.assert_array_equal(g, e)
        except AssertionError:
            return f"mismatch: output #{i} values differ"
    return PASS


def run_ort(case) -> list:
    import onnxruntime as ort  # noqa: PLC0415

    names, inputs, _ = _feeds(case)
    sess = ort.InferenceSession(case.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, inputs, strict=True)))


def run_tvm(case) -> list:
    """TVM's own default: import, ``tvm.compile`` with the default Relax pipeline, VM."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415
    from tvm.relax.frontend.onnx import from_onnx  # noqa: PLC0415

    _, inputs, _ = _feeds(case)
    mod = from_onnx(case.model, keep_params_in_input=False)
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x) for x in inputs])
    return _flatten(out)


def _flatten(out) -> list:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    if isinstance(out, list | tuple) or type(out).__name__ in ("Array", "List"):
        return [a for o in out for a in _flatten(o)]
    return [np.asarray(out)]


def run_edgecc(case) -> list:
    import edgecc  # noqa: PLC0415

    names, inputs, _ = _feeds(case)
    # inputs with dynamic dims get the data's shapes, as a user's --input-shape would
    dynamic = {vi.name for vi in case.model.graph.input
               if any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)}
    shapes = {n: a.shape for n, a in zip(names, inputs, strict=True) if n in dynamic}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "a"
        edgecc.compile(case.model, target="x86_64", output=out, isa_variants=False,
                       use_cache=False, input_shapes=shapes)
        model = edgecc.load(out)
        got = model.run(dict(zip(names, inputs, strict=True)))
        return [got[o.name] for o in model.manifest.outputs]


RUNNERS = {"edgecc": run_edgecc, "tvm": run_tvm, "ort": run_ort}


def run_one(case, backend: str) -> str:
    """``pass`` or the reason the backend fails the case (one line)."""
    try:
        got = RUNNERS[backend](case)
    except Exception as e:  # noqa: BLE001  (every failure is a result here)
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        return f"error: {type(e).__name__}: {lines[-1] if lines else ''}"[:300]
    return _compare(got, _feeds(case)[2], case)


# ------------------------------------------------------------------------------- workers


def _serve(conn) -> None:
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    with contextlib.redirect_stdout(io.StringIO()):
        cases = collect_cases()
    while True:
        try:
            name, backend = conn.recv()
        except EOFError:
            return
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = run_one(cases[name], backend)
        conn.send(result)


class Worker:
    """A process that runs (case, backend) requests; killed and restarted on a time-out."""

    def __init__(self):
        self._start()

    def _start(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()

    def run(self, name: str, backend: str, timeout: float) -> str:
        try:
            self.conn.send((name, backend))
            if self.conn.poll(timeout):
                return self.conn.recv()
            result = f"timeout: over {timeout:.0f} s"
        except (EOFError, BrokenPipeError, ConnectionResetError):
            result = f"crash: worker died (exit {self.proc.exitcode})"
        self.close()
        self._start()
        return result

    def close(self):
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()


def run_cases(names: list[str], *, backends=BACKENDS, jobs: int = 2, timeout: float = 120.0,
              on_result=None) -> dict[str, dict[str, str]]:
    """{case: {backend: result}} for every case, ``jobs`` workers in parallel."""
    results: dict[str, dict[str, str]] = {n: {} for n in names}
    todo = [(n, b) for n in names for b in backends]
    lock = threading.Lock()

    def loop():
        worker = Worker()
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    name, backend = todo.pop(0)
                r = worker.run(name, backend, timeout)
                with lock:
                    results[name][backend] = r
                    if on_result is not None and len(results[name]) == len(backends):
                        on_result(name, results[name])
        finally:
            worker.close()

    threads = [threading.Thread(target=loop) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def data_dependent(results: dict[str, str]) -> bool:
    """The case fails in edgecc only because an output's shape depends on input values."""
    r = results.get("edgecc", "")
    return "dynamic shape" in r or "known rank" in r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--match", default="", help="only cases whose name contains this")
    ap.add_argument("--sample", type=int, default=0, help="a fixed sample of N cases")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case and backend")
    ap.add_argument("--json", type=Path, help="write every result here")
    args = ap.parse_args(argv)

    names = [n for n in collect_cases() if args.match in n]
    if args.sample:
        names = sample_names(names, args.sample)
    t0 = time.time()
    done = [0]

    def progress(name, res):
        done[0] += 1
        if done[0] % 25 == 0 or done[0] == len(names):
            print(f"[{done[0]}/{len(names)}] {time.time() - t0:.0f} s", file=sys.stderr,
                  flush=True)

    results = run_cases(names, jobs=args.jobs, timeout=args.timeout, on_result=progress)
    passed = {b: sum(1 for r in results.values() if r[b] == PASS) for b in BACKENDS}
    lost = sorted(n for n, r in results.items() if r["tvm"] == PASS and r["edgecc"] != PASS)
    gained = sorted(n for n, r in results.items() if r["edgecc"] == PASS and r["tvm"] != PASS)
    dynamic = [n for n in lost if data_dependent(results[n])]
    print(f"# ONNX backend node cases, {len(names)} cases, {machine()}")
    print(f"# python3 benchmarks/bench_conformance.py {' '.join(argv or sys.argv[1:])}, "
          f"{time.time() - t0:.0f} s\n")
    print(table(["backend", "passed", "of"],
                [[b, str(passed[b]), str(len(names))] for b in BACKENDS]))
    print(f"\nedgecc passes {len(gained)} case(s) TVM fails and loses {len(lost)} that TVM "
          f"passes ({len(dynamic)} of them {DATA_DEPENDENT}).")
    if lost:
        print("\ncases TVM passes and edgecc does not:")
        for n in lost:
            print(f"  {n}: {results[n]['edgecc']}")
        reasons = Counter(results[n]["edgecc"].split(":")[0] for n in lost)
        print("\nby kind: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
