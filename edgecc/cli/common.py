"""Helpers shared by the subcommands: input parsing, RPC options, error output."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import EdgeccError, InputError, ModelError, OutputExistsError


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _progress(name: str, seconds: float) -> None:
    print(f"[edgecc] {name:<20} {seconds:8.2f} s", file=sys.stderr, flush=True)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"bad --input-shape {text!r}: expected NAME=d0,d1,... with positive integers, "
            "e.g. x=1,3,224,224")
    return name, shape


def parse_input_file(text: str) -> tuple[str | None, Path]:
    """``NAME=file.npy`` or ``file.npz`` (its keys are the input names)."""
    name, sep, path = text.partition("=")
    if sep and name and path:
        return name, Path(path)
    if text.endswith(".npz"):
        return None, Path(text)
    raise argparse.ArgumentTypeError(f"bad --input {text!r}: expected NAME=FILE.npy or FILE.npz")


def load_inputs(items: Sequence[tuple[str | None, Path]]) -> dict[str, np.ndarray]:
    feed: dict[str, np.ndarray] = {}
    for name, path in items:
        if not path.is_file():
            raise InputError(f"input file '{path}' not found")
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"input file '{path}' is not a valid .npy/.npz file ({e})") from None
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                feed.update({k: data[k] for k in data.files})
        else:
            if name is None:
                raise InputError(f"'{path}': a .npy input needs a name (NAME={path})")
            feed[name] = data
    return feed


def _add_build_arg(p) -> None:
    p.add_argument("--build", metavar="TARGET",
                   help="which of the artifact's builds to run (x86_64 artifacts carry an "
                   "AVX-512 build too): default, the best this CPU can run")
    p.add_argument("--verify", action="store_true",
                   help="hash the library against the manifest's sha256 even if it was checked "
                   "before (it is on first use, and its size on every load)")


def _rpc_settings(args):
    if not (args.rpc_tracker or args.rpc_key):
        return None
    if getattr(args, "build", None):
        raise InputError("--build chooses among the builds run on this machine; an RPC device "
                         "runs the artifact's model.so")
    from ..devices.rpc import RPCSettings  # noqa: PLC0415

    return RPCSettings.parse(args.rpc_tracker or "", args.rpc_key or "",
                             session_timeout_s=args.rpc_session_timeout,
                             token_file=args.rpc_token_file)


def _add_rpc_args(p, what: str) -> None:
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help=f"{what} on a device registered at "
                   "this TVM RPC tracker (edgecc-run serve or python -m tvm.exec.rpc_server)")
    p.add_argument("--rpc-key", help="the device key at the tracker")
    p.add_argument("--rpc-token-file", metavar="F", help="the device's token file (what "
                   "edgecc-run serve made on its first start; copy it from the device)")
    p.add_argument("--rpc-session-timeout", type=int, default=120, metavar="S",
                   help="end the device session after S seconds (default 120)")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _check_output_file(path: Path, *, force: bool) -> None:
    if path.exists() and not force:
        raise OutputExistsError(f"'{path}' already exists (use --force to replace it)")


def _onnx_model_arg(path: Path, verb: str, input_shapes=()):
    from ..frontend import read_onnx  # noqa: PLC0415

    if path.suffix in (".pt", ".pth"):
        from ..frontend.onnx_torch import module_to_onnx  # noqa: PLC0415

        return module_to_onnx(path, dict(input_shapes))
    if path.suffix == ".pt2":
        raise ModelError(f"{verb} takes ONNX or a torch.save'd nn.Module (.pt); for an exported "
                         "program (.pt2) export to ONNX first (torch.onnx.export)")
    return read_onnx(path)[0]


def _missing_action(parser) -> int:
    parser.print_help()
    return 2


def _add_quantize_args(p) -> None:
    q = p.add_argument_group("compression")
    q.add_argument("--quantize", choices=("int8", "fp16"),
                   help="int8: static post-training quantization (calibrated QDQ, int8 x int8 -> "
                   "int32 compute; needs --calibration); fp16: fp16 weights and products, fp32 "
                   "accumulation")
    q.add_argument("--calibration", type=Path, metavar="DATA.npz",
                   help="int8 calibration samples: one array per model input named like it "
                   "(or 'x'), samples along the first axis")
    q.add_argument("--calibration-method", choices=("minmax", "percentile", "entropy"),
                   default="minmax", help="how activation ranges are chosen (default: minmax)")
    q.add_argument("--per-channel", action="store_true",
                   help="int8 weights with one scale per output channel (default: per tensor)")


def _quantization(args):
    from ..compress.quantize import Quantization  # noqa: PLC0415

    if args.quantize is None:
        if args.calibration or args.per_channel or args.calibration_method != "minmax":
            raise EdgeccError("--calibration, --calibration-method and --per-channel go with "
                              "--quantize int8")
        return None
    return Quantization(args.quantize, calibration=args.calibration,
                        method=args.calibration_method, per_channel=args.per_channel)
