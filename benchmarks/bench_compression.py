#!/usr/bin/env python3
"""Compression report: every variant of the digits CNN and the example models, compiled by edgecc,
against ONNX Runtime (same model; for int8 the same QDQ model) and PyTorch, in one run.

Columns: weights in the artifact, model.so size, FLOPs, digits top-1 accuracy (edgecc and ORT on
the same model), median latency (batch 1) and ratios. Trains the digits CNN first (~10 s).

    python benchmarks/bench_compression.py [--models digits,mobilenetv2,resnet18,mlp,transformer]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import example_onnx, machine, median_ms, ort_session, table  # noqa: E402


def main() -> int:
    import numpy as np
    import onnx
    import torch
    import zoo

    import edgecc
    from edgecc.compress import datasets
    from edgecc.compress.distill import DistillConfig, distill
    from edgecc.errors import EdgeccError
    from edgecc.compress.evaluate import predict_artifact, predict_onnx, top1
    from edgecc.compress.prune import count_flops, prune
    from edgecc.compress.quantize import Quantization
    from edgecc.runtime import load

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="digits," + ",".join(zoo.MODELS))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--epochs", type=int, default=30, help="fine-tuning / distillation epochs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    work = Path(tempfile.mkdtemp(prefix="edgecc-compress-"))
    os.environ["EDGECC_CACHE_DIR"] = str(work / "cache")
    split = datasets.digits()
    headers = ["model", "variant", "weights", "model.so", "MFLOPs", "acc edgecc", "acc ORT",
               "edgecc ms", "ORT ms (same model)", "edgecc/ORT", "vs fp32 edgecc"]
    rows, notes = [], []

    def measure(label, variant, onnx_path, feed, *, quantize=None, acc_data=None, ort_model=None):
        out = work / f"{label}-{variant}".replace(" ", "_").replace("+", "_")
        r = edgecc.compile(onnx_path, output=out, quantize=quantize)
        m = load(out)
        ms = median_ms(lambda: m.run(feed))
        ref_model = out / "model.qdq.onnx" if quantize and quantize.mode == "int8" else onnx_path
        ref_model = ort_model or ref_model
        sess = ort_session(ref_model, args.threads)
        ort_ms = median_ms(lambda: sess.run(None, feed))
        acc = acc_ort = "-"
        if acc_data is not None:
            acc = f"{top1(predict_artifact(out, acc_data.x), acc_data.y) * 100:.2f}%"
            acc_ort = f"{top1(predict_onnx(ref_model, acc_data.x), acc_data.y) * 100:.2f}%"
        flops = count_flops(onnx.load(onnx_path))
        return [label, variant, f"{r.manifest.options['weights_bytes'] / 1024:.1f} KiB",
                f"{(out / 'model.so').stat().st_size / 1024:.0f} KiB", f"{flops / 1e6:.2f}", acc,
                acc_ort, f"{ms:.3f}", f"{ort_ms:.3f}", f"{ms / ort_ms:.2f}x"], ms

    def add(row_ms, base):
        row, ms = row_ms
        rows.append(row + ([f"{base / ms:.2f}x"] if base else ["1.00x"]))
        print(f"done {row[0]} {row[1]}", flush=True)
        return ms

    try:
        for name in args.models.split(","):
            if name == "digits":
                import make_digits

                make_digits.main(["-o", str(work)])
                src = work / "digits.onnx"
                calib = work / "digits_calib.npz"
                feed = {"input": split.test.x[:1]}
                t = torch.from_numpy(feed["input"])
                base = add(measure("digits", "fp32", src, feed, acc_data=split.test), None)
                for pc in (False, True):
                    add(measure("digits", f"int8 {'per-channel' if pc else 'per-tensor'}", src, feed,
                                quantize=Quantization("int8", calibration=calib, per_channel=pc),
                                acc_data=split.test), base)
                add(measure("digits", "fp16", src, feed, quantize=Quantization("fp16"),
                            acc_data=split.test), base)
                pruned = work / "pruned.onnx"
                onnx.save(prune(onnx.load(src), sparsity=0.5, method="l1-structured")[0], pruned)
                add(measure("digits", "pruned 50% (no training)", pruned, feed,
                            acc_data=split.test), base)
                cfg = DistillConfig(epochs=args.epochs)
                ft = distill(None, pruned, data=split.train, test=split.test,
                             output=work / "ft.onnx", config=DistillConfig(alpha=0.0,
                                                                           epochs=args.epochs))
                add(measure("digits", "pruned 50% + fine-tuned (no teacher)", work / "ft.onnx",
                            feed, acc_data=split.test), base)
                kd = distill(src, pruned, data=split.train, test=split.test,
                             output=work / "kd.onnx", config=cfg)
                add(measure("digits", "pruned 50% + distilled", work / "kd.onnx", feed,
                            acc_data=split.test), base)
                add(measure("digits", "pruned 50% + distilled + int8", work / "kd.onnx", feed,
                            quantize=Quantization("int8", calibration=calib, per_channel=True),
                            acc_data=split.test), base)
                notes.append(f"digits KD: distilled {kd.student_accuracy * 100:.2f}% vs fine-tuned "
                             f"without teacher {ft.student_accuracy * 100:.2f}% "
                             f"({(kd.student_accuracy - ft.student_accuracy) * 100:+.2f} points); "
                             f"teacher {kd.teacher_accuracy * 100:.2f}%")
                with torch.no_grad():
                    tm = zoo.DigitsCNN().eval()
                    notes.append(f"PyTorch eager fp32 digits CNN: "
                                 f"{median_ms(lambda: tm(t)):.3f} ms")
                continue
            model, example, src, feed = example_onnx(name, work)
            calib = work / f"{name}_calib.npz"
            rng = np.random.default_rng(0)
            np.savez(calib, input=rng.standard_normal((32, *example.shape[1:])).astype("float32"))
            base = add(measure(name, "fp32", src, feed), None)
            add(measure(name, "int8 per-channel", src, feed,
                        quantize=Quantization("int8", calibration=calib, per_channel=True)), base)
            add(measure(name, "fp16", src, feed, quantize=Quantization("fp16")), base)
            try:
                pruned = work / f"{name}-pruned.onnx"
                onnx.save(prune(onnx.load(src), sparsity=0.5, method="l1-structured")[0], pruned)
                add(measure(name, "pruned 50% (structured)", pruned, feed), base)
            except EdgeccError as e:
                notes.append(f"{name}: structured pruning not applicable ({str(e)[:90]}...)")
            with torch.no_grad():
                notes.append(f"PyTorch eager fp32 {name}: {median_ms(lambda: model(example)):.3f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmachine: {machine()}; threads: {args.threads}; target x86_64 (shipped tuning logs "
          "apply to fp32 kernels only)")
    print(table(headers, rows))
    for n in notes:
        print(f"- {n}")
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    print(f"({time.perf_counter() - t0:.0f} s)")
    raise SystemExit(rc)
