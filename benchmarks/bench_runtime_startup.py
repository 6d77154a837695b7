#!/usr/bin/env python3
"""Import time and memory of the device-side loader: ``edgecc.runtime`` vs ``import tvm`` vs
ONNX Runtime, each in a fresh process: time to import, time to first inference done (import +
load + one run), and peak RSS. Also with torch hidden, as on a device that has no torch
(tvm_ffi imports torch whenever it is installed).

    python benchmarks/bench_runtime_startup.py [--model mobilenetv2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import example_onnx, machine, table

HIDE_TORCH = "import sys; sys.modules['torch'] = None\n"

SNIPPETS = {
    "edgecc.runtime": """
import time; t0 = time.perf_counter()
import numpy as np, edgecc.runtime as rt
t1 = time.perf_counter()
m = rt.load(ART); m.run(input=np.zeros(SHAPE, 'float32'))
t2 = time.perf_counter()
""",
    "import tvm (relax VM)": """
import time; t0 = time.perf_counter()
import numpy as np, tvm
from tvm import relax
t1 = time.perf_counter()
vm = relax.VirtualMachine(tvm.runtime.load_module(ART + '/model.so'), tvm.cpu())
vm['main'](tvm.runtime.tensor(np.zeros(SHAPE, 'float32')))
t2 = time.perf_counter()
""",
    "onnxruntime": """
import time; t0 = time.perf_counter()
import numpy as np, onnxruntime as ort
t1 = time.perf_counter()
s = ort.InferenceSession(ONNX, providers=['CPUExecutionProvider'])
s.run(None, {'input': np.zeros(SHAPE, 'float32')})
t2 = time.perf_counter()
""",
}
FOOTER = """
import json  # VmHWM, not ru_maxrss: ru_maxrss carries the parent's peak across exec
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({'import': t1 - t0, 'first': t2 - t0, 'rss': int(hwm) / 1024}))
"""


def measure(code: str, runs: int) -> dict[str, float]:
    results = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                         text=True, check=True).stdout.strip().splitlines()[-1])
               for _ in range(runs)]
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def main() -> int:

    import edgecc

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgecc-startup-"))
    try:
        _, example, onnx_path, _ = example_onnx(args.model, work)
        edgecc.compile(onnx_path, output=work / "art", use_cache=False)
        header = f"ART = {str(work / 'art')!r}; ONNX = {str(onnx_path)!r}; " \
                 f"SHAPE = {tuple(example.shape)}\n"
        rows = []
        for hide in (False, True):
            for name, body in SNIPPETS.items():
                r = measure((HIDE_TORCH if hide else "") + header + body + FOOTER, args.runs)
                rows.append([name + (" (no torch)" if hide else ""), f"{r['import'] * 1e3:.0f}",
                             f"{r['first'] * 1e3:.0f}", f"{r['rss']:.0f}"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {machine()}; model: {args.model}; median of {args.runs} fresh processes")
    print(table(["loader", "import ms", "first inference done ms", "peak RSS MiB"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
