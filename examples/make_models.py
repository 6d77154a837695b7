#!/usr/bin/env python3
"""Make the example models: small MobileNetV2-, ResNet-18-style CNNs, an MLP and a transformer
encoder block, with fixed seeds, exported to ONNX (nothing is downloaded).

    python examples/make_models.py [-o models/] [NAME ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import CORPUS, MODELS, build, export_onnx  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", choices=[*MODELS, *CORPUS, []], metavar="NAME",
                   help=f"models to make (default: all of {', '.join(MODELS)}; also "
                        f"{', '.join(CORPUS)}: tuning corpora of CNN and transformer layers)")
    p.add_argument("-o", "--output", type=Path, default=Path("models"), help="output directory")
    args = p.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(MODELS):
        model, example = build(name)
        path = args.output / f"{name}.onnx"
        export_onnx(model, example, path)
        print(f"{path}  input {tuple(example.shape)}  ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
