"""The artifact's verbs: ``run``, ``bench``, ``verify``, ``package`` and ``rpc status``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import InputError, VerificationError
from .common import parse_input_file, load_inputs, _add_build_arg, _rpc_settings, _add_rpc_args, _safe


def register_run(sub) -> None:
    p = sub.add_parser("run", help="run a compiled artifact here or on an RPC device",
                       description="Load OUT_DIR, feed inputs from .npy/.npz files (or random "
                       "ones), print or save the outputs, optionally benchmark.")
    p.add_argument("artifact", type=Path, help="artifact directory written by 'edgecc compile'")
    p.add_argument("-i", "--input", action="append", type=parse_input_file, default=[],
                   metavar="NAME=FILE.npy", help="an input (or FILE.npz with all of them); "
                   "repeatable; random inputs when none is given")
    p.add_argument("-o", "--output", type=Path, help="directory to write NAME.npy outputs to")
    p.add_argument("--bench", type=int, metavar="REPEAT", default=0,
                   help="also time REPEAT measurements (mean/p50/p90)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    _add_build_arg(p)
    _add_rpc_args(p, "run")
    p.set_defaults(drive=drive_run)


def drive_run(args) -> int:
    from ..artifact.manifest import Manifest  # noqa: PLC0415
    from ..runtime import load, random_inputs  # noqa: PLC0415

    remote = _rpc_settings(args)
    specs = Manifest.read(args.artifact).inputs if args.artifact.is_dir() else ()
    m = None if remote else load(args.artifact, build=args.build, verify=args.verify)
    if m is not None and m.manifest.variants:
        print(f"running the {m.build} build")
    feed = load_inputs(args.input) if args.input else random_inputs(specs, seed=args.seed)
    if not args.input:
        print("no --input given: using random inputs (seed %d)" % args.seed)
    bench = None
    if remote:
        from ..devices.remote import run_remote  # noqa: PLC0415

        ran = run_remote(args.artifact, remote, feed, bench_repeat=args.bench)
        outputs, bench = ran.outputs, ran.bench
        print(f"ran on {ran.where(remote)}")
    else:
        outputs = m.run(feed)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        for name, arr in outputs.items():
            np.save(args.output / f"{_safe(name)}.npy", arr)
        print(f"wrote {len(outputs)} output(s) to {args.output}")
    for name, arr in outputs.items():
        flat = arr.reshape(-1)
        first = np.array2string(flat[:6], precision=5)
        print(f"{name}: {arr.dtype}{list(arr.shape)} first values {first}")
    if args.bench:
        bench = bench or m.benchmark(feed, repeat=args.bench)
        print("latency: " + bench.format())
    return 0


def register_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmark an artifact here or on an RPC device",
                       description="Time the artifact's main function (TVM time evaluator): "
                       "mean/p50/p90 over REPEAT measurements, random inputs.")
    p.add_argument("artifact", type=Path)
    p.add_argument("--repeat", type=int, default=50, help="measurements (default 50)")
    p.add_argument("--number", type=int, default=1, help="runs per measurement (default 1)")
    _add_build_arg(p)
    _add_rpc_args(p, "benchmark")
    p.set_defaults(drive=drive_bench)


def drive_bench(args) -> int:
    from ..artifact.manifest import Manifest  # noqa: PLC0415
    from ..runtime import load, random_inputs  # noqa: PLC0415

    if args.repeat < 1 or args.number < 1:
        raise InputError("--repeat and --number must be at least 1")
    remote = _rpc_settings(args)
    if remote:
        from ..devices.remote import run_remote  # noqa: PLC0415

        feed = random_inputs(Manifest.read(args.artifact).inputs)
        ran = run_remote(args.artifact, remote, feed, bench_repeat=args.repeat,
                         bench_number=args.number)
        result, where = ran.bench, ran.where(remote)
    else:
        m = load(args.artifact, build=args.build, verify=args.verify)
        result = m.benchmark(repeat=args.repeat, number=args.number)
        where = "this machine" + (f" ({m.build} build)" if m.manifest.variants else "")
    print(f"{args.artifact} on {where}: {result.format()}")
    return 0


def register_rpc(sub) -> None:
    p = sub.add_parser("rpc", help="TVM RPC devices: status of a tracker",
                       description="Inspect devices registered with a TVM RPC tracker.")
    rsub = p.add_subparsers(dest="rpc_command", metavar="SUBCOMMAND", required=True)
    s = rsub.add_parser("status", help="list devices and queues at a tracker")
    s.add_argument("--tracker", required=True, metavar="HOST:PORT")
    s.set_defaults(drive=drive_rpc_status)


def drive_rpc_status(args) -> int:
    from ..devices.remote import tracker_status  # noqa: PLC0415
    from ..devices.rpc import RPCSettings  # noqa: PLC0415

    settings = RPCSettings.parse(args.tracker, "-")
    print(tracker_status(settings.tracker_host, settings.tracker_port).format())
    return 0


def register_verify(sub) -> None:
    p = sub.add_parser("verify", help="compare an artifact with ONNX Runtime",
                       description="Run the same random inputs through ONNX Runtime and the "
                       "artifact (each of its builds this CPU can run: an x86_64 artifact's "
                       "AVX2 and AVX-512 builds); print max abs/rel error per output; exit 1 "
                       "over tolerance.")
    p.add_argument("artifact", type=Path)
    p.add_argument("model", help="the ONNX model the artifact was compiled from")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="tolerance on max|a-b| / max|reference| (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(drive=drive_verify)


def drive_verify(args) -> int:
    from ..runtime.verify import verify_artifact  # noqa: PLC0415

    report = verify_artifact(args.artifact, args.model, rtol=args.rtol, seed=args.seed)
    print(report.format())
    if not report.passed:
        raise VerificationError(f"outputs differ from ONNX Runtime beyond rel {args.rtol:g}")
    return 0


def register_package(sub) -> None:
    p = sub.add_parser("package", help="bundle an artifact with the native loader for its device",
                       description="Write a self-contained bundle for the artifact's CPU "
                       "architecture: model.so, model.json, lib/ (TVM runtime), bin/edgecc-run "
                       "(native loader, no Python), run.sh and README.txt. OUTPUT ending in "
                       ".tar.gz is an archive, anything else a directory.")
    p.add_argument("artifact", type=Path, help="artifact directory written by 'edgecc compile'")
    p.add_argument("-o", "--output", type=Path, required=True, help="bundle (.tar.gz or dir)")
    p.add_argument("-f", "--force", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--no-strip", action="store_true", help="keep symbols and debug info")
    p.set_defaults(drive=drive_package)


def drive_package(args) -> int:
    from ..deploy.package import package_artifact  # noqa: PLC0415

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result = package_artifact(args.artifact, args.output, force=args.force,
                              strip=not args.no_strip, log=log)
    print(f"bundle: {result.path}")
    print(result.format())
    return 0
