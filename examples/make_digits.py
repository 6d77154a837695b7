#!/usr/bin/env python3
"""Train the reference digits CNN (sklearn's bundled 8x8 digits, fixed split, seeded) and export it.

Writes OUT/digits.onnx (BatchNormalization kept in the graph), OUT/digits_calib.npz (200 training
images, the input named "input": calibration data for `edgecc compile --quantize int8`) and
OUT/digits_test.npz (the test split, arrays x and y). Under a minute on 2 cores.

    python examples/make_digits.py [-o models/] [--epochs 40]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from zoo import DigitsCNN, export_onnx  # noqa: E402

from edgecc.compress import datasets  # noqa: E402


def train(epochs: int = 40, *, seed: int = 0) -> tuple[nn.Module, float]:
    data = datasets.digits()
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data.test.x)).argmax(1).numpy()
    return model, float((pred == data.test.y).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", type=Path, default=Path("models"), help="output directory")
    p.add_argument("--epochs", type=int, default=40)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    t = time.perf_counter()
    model, acc = train(args.epochs)
    print(f"trained in {time.perf_counter() - t:.1f} s: digits test accuracy {acc * 100:.2f}%")
    args.output.mkdir(parents=True, exist_ok=True)
    export_onnx(model, torch.zeros(1, 1, 8, 8), args.output / "digits.onnx", keep_batchnorm=True)
    data = datasets.digits()
    np.savez(args.output / "digits_calib.npz", input=data.train.x[:200])
    np.savez(args.output / "digits_test.npz", x=data.test.x, y=data.test.y)
    print(f"{args.output / 'digits.onnx'}, digits_calib.npz (200 samples), digits_test.npz "
          f"({len(data.test)} samples)")
    return 0 if acc >= 0.97 else 1


if __name__ == "__main__":
    sys.exit(main())
