#!/usr/bin/env python3
"""int8 against fp32: architecture-zoo models at their real input size, compiled by edgecc in
fp32 and int8 (its own calibration: S8S8, per channel), against ONNX Runtime's fp32 and its two
QDQ models made by its own ``quantize_static`` (S8S8: edgecc's very QDQ model; U8S8: uint8
activations), timed in alternating rounds in one process with a pause between runtimes.

Columns per build the CPU can run (the x86_64 artifact's VNNI, AVX-512 and AVX2 builds), both
precisions in the same log regime (the shipped logs, none of which is made from these models).
Accuracy: the share of fp32's top-5 classes int8 keeps, on inputs held out from calibration, and
edgecc int8's largest difference from ORT running the same QDQ model, in output quanta.

    python benchmarks/bench_int8.py [--models resnet50,mobilenetv2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_ms, machine, ort_session, table  # noqa: E402


def _ort_u8s8(fp32: Path, out: Path, calib) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter({"input": s[None]} for s in calib)

        def get_next(self):
            return next(self._it, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    return out


def main(argv=None) -> int:
    import numpy as np

    import arch_zoo
    import edgecc
    from edgecc.compress.evaluate import predict_onnx
    from edgecc.compress.quantize import Quantization
    from edgecc.runtime.model import runnable_builds

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,mobilenetv2")
    p.add_argument("--target", default="x86_64")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calibration", type=int, default=32, help="calibration samples")
    p.add_argument("--held-out", type=int, default=100, help="accuracy samples (not calibrated)")
    p.add_argument("--pause", type=float, default=0.5)
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    rows, acc_rows = [], []
    with tempfile.TemporaryDirectory(prefix="edgecc-int8-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("EDGECC_CACHE_DIR", str(work / "cache"))
        for name in args.models.split(","):
            fp32 = work / f"{name}.onnx"
            arch_zoo.export_arch(name, fp32)
            shape = arch_zoo.ARCHS[name][1]
            rng = np.random.default_rng(0)
            calib = rng.standard_normal((args.calibration, *shape[1:])).astype("float32")
            held = rng.standard_normal((args.held_out, *shape[1:])).astype("float32")
            np.savez(work / "calib.npz", input=calib)
            print(f"{name}: compiling fp32 and int8 for {args.target}", flush=True)
            a32, a8 = work / f"{name}-fp32", work / f"{name}-int8"
            edgecc.compile(fp32, output=a32, target=args.target, force=True)
            edgecc.compile(fp32, output=a8, target=args.target, force=True,
                           quantize=Quantization("int8", calibration=work / "calib.npz",
                                                 per_channel=True))
            u8s8 = _ort_u8s8(fp32, work / f"{name}.u8s8.onnx", calib)
            feed = {"input": held[:1]}
            runs = {}
            builds = [b for b in runnable_builds(edgecc.load(a8).manifest)[0]]
            for build in builds:
                m32 = edgecc.load(a32, num_threads=args.threads,
                                  build=build if "vnni" not in build else None)
                m8 = edgecc.load(a8, num_threads=args.threads, build=build)
                runs[f"fp32 {m32.build}"] = lambda m=m32: m.run(feed)
                runs[f"int8 {build}"] = lambda m=m8: m.run(feed)
            for label, path in (("ORT fp32", fp32), ("ORT S8S8", a8 / "model.qdq.onnx"),
                                ("ORT U8S8", u8s8)):
                sess = ort_session(path, args.threads)
                runs[label] = lambda s=sess: s.run(None, feed)
            print(f"{name}: timing {', '.join(runs)}", flush=True)
            per_round = interleaved_ms(runs, rounds=args.rounds, pause_s=args.pause)
            med = {k: statistics.median(v) for k, v in per_round.items()}
            ort_best = min(med["ORT fp32"], med["ORT S8S8"], med["ORT U8S8"])
            for build in builds:
                f32 = next(v for k, v in med.items() if k.startswith("fp32 ") and (
                    k == f"fp32 {build}" or "vnni" in build and k == "fp32 x86_64-avx512"))
                i8 = med[f"int8 {build}"]
                rows.append([name, build, f"{f32:.2f}", f"{i8:.2f}", f"{f32 / i8:.2f}x",
                             f"{i8 / ort_best:.2f}x"])
            rows.append([name, "ONNX Runtime", f"{med['ORT fp32']:.2f}",
                         f"S8S8 {med['ORT S8S8']:.2f} / U8S8 {med['ORT U8S8']:.2f}",
                         f"{med['ORT fp32'] / min(med['ORT S8S8'], med['ORT U8S8']):.2f}x", ""])
            # accuracy on held-out inputs
            m32, m8 = edgecc.load(a32), edgecc.load(a8)
            y32 = np.concatenate([next(iter(m32.run({"input": x[None]}).values())) for x in held])
            y8 = np.concatenate([next(iter(m8.run({"input": x[None]}).values())) for x in held])
            top32, top8 = np.argsort(-y32, 1)[:, :5], np.argsort(-y8, 1)[:, :5]
            overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top32, top8)])
            ref = predict_onnx(a8 / "model.qdq.onnx", held[:8], optimize=False)
            quantum = float(np.abs(ref).max()) / 127
            quanta = float(np.abs(y8[:8] - ref).max()) / quantum
            acc_rows.append([name, m8.build, f"{overlap:.3f}", str(len(held)), f"{quanta:.2f}"])
    print(f"\nint8 vs fp32, {args.rounds} interleaved rounds, {args.threads} threads, "
          f"batch 1; {machine()}")
    print(table(["model", "build", "fp32 ms", "int8 ms", "int8 speedup", "int8 / ORT best"],
                rows))
    print()
    print(table(["model", "int8 build", "top-5 overlap with fp32", "held-out inputs",
                 "max |edgecc - ORT same QDQ| (quanta)"], acc_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
