"""``edgecc partition`` and ``edgecc pipeline run``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import InputError, VerificationError
from .common import _safe, _missing_action


def register_partition(sub) -> None:
    p = sub.add_parser("partition", help="cut a model into stages for several devices",
                       description="Cut the ONNX model into N consecutive stages balanced by a "
                       "FLOPs cost model (fewest bytes between stages among near-optimal cuts), "
                       "compile each stage for its target and write OUT_DIR/pipeline.json + one "
                       "artifact directory per stage. Run it with 'edgecc pipeline run'.")
    p.add_argument("model", type=Path, help="the ONNX model")
    p.add_argument("--stages", type=int, required=True, help="number of stages (devices)")
    p.add_argument("--targets", default="x86_64",
                   help="target for all stages, or one per stage: T1,T2,... (default x86_64)")
    p.add_argument("--link-cost", type=float, default=50.0, metavar="FLOP_PER_BYTE",
                   help="cost of a byte received from the previous stage, in FLOPs (default 50: "
                   "~10 GFLOP/s devices on a ~200 MB/s link; 0 balances FLOPs only)")
    p.add_argument("-o", "--output", type=Path, required=True, help="pipeline directory")
    p.add_argument("-f", "--force", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(drive=drive_partition)


def drive_partition(args) -> int:
    from ..parallel.partition import partition  # noqa: PLC0415

    targets = [t for t in args.targets.split(",") if t]
    pipe = partition(args.model, stages=args.stages, output=args.output, targets=targets,
                     force=args.force, link_cost=args.link_cost,
                     log=lambda m: print(m, file=sys.stderr, flush=True))
    print(pipe.describe())
    print(f"wrote {args.output}/pipeline.json")
    return 0


def register_pipeline(sub) -> None:
    p = sub.add_parser("pipeline", help="run a partitioned model over several devices")
    psub = p.add_subparsers(dest="pipeline_command", metavar="ACTION")
    r = psub.add_parser("run", help="stream inputs through the stages on RPC devices",
                        description="Upload each stage to its device (stage i -> KEYi), then "
                        "stream the items: stage k works on item n while stage k+1 works on item "
                        "n-1. Prints throughput, latency and bytes between stages.")
    r.add_argument("pipeline", type=Path, help="directory written by 'edgecc partition'")
    r.add_argument("--devices", required=True, metavar="HOST:PORT:KEY1,KEY2,...",
                   help="tracker and one device key per stage, or 'local' (this process)")
    r.add_argument("--rpc-token-file", metavar="F", help="the devices' token file (edgecc-run "
                   "serve --token-file F on each of them)")
    r.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="items for a model input: an array (N, *shape) or one of the input's "
                   "shape; repeat per input")
    r.add_argument("--count", type=int, default=16, help="random items when no --input (16)")
    r.add_argument("-o", "--output", type=Path, help="write each output, stacked over items, "
                   "to DIR/NAME.npy")
    r.add_argument("--verify", type=Path, metavar="MODEL.onnx",
                   help="compare every output with ONNX Runtime running the unpartitioned model")
    r.add_argument("--rtol", type=float, default=1e-4, help="tolerance for --verify (1e-4)")
    r.add_argument("--stage-timeout", type=float, default=30.0, metavar="S",
                   help="fail when a stage does not answer within S seconds (default 30)")
    r.set_defaults(drive=drive_pipeline_run)
    p.set_defaults(drive=lambda args: _missing_action(p))


def _pipeline_items(pipe, args) -> list[dict]:
    specs = {t.name: t for t in pipe.model_inputs}
    if not args.input:
        rng = np.random.default_rng(0)
        if args.count < 1:
            raise InputError("--count must be at least 1")
        return [{t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in specs.values()}
                for _ in range(args.count)]
    items: dict[str, list[np.ndarray]] = {}
    for text in args.input:
        name, sep, path = text.partition("=")
        if not sep or name not in specs:
            raise InputError(f"bad --input {text!r}: expected NAME=FILE.npy with NAME one of "
                             f"{', '.join(specs)}")
        a = np.load(path, allow_pickle=False)
        shape = specs[name].shape
        if tuple(a.shape) == shape:  # one item
            items[name] = [a]
        elif tuple(a.shape[1:]) == shape:  # (N, *shape)
            items[name] = list(a)
        elif shape[0] == 1 and tuple(a.shape[1:]) == shape[1:]:  # (N, *shape[1:]), batch 1
            items[name] = [a[i:i + 1] for i in range(len(a))]
        else:
            raise InputError(f"--input {name}: shape {tuple(a.shape)} is neither {shape} nor N "
                             f"items of it")
    counts = {len(v) for v in items.values()}
    if set(items) != set(specs) or len(counts) != 1:
        raise InputError("give every model input once (--input NAME=FILE.npy), with the same "
                         "number of items")
    return [{n: np.asarray(v[i], order="C") for n, v in items.items()}
            for i in range(counts.pop())]


def drive_pipeline_run(args) -> int:
    from ..parallel.partition import Pipeline  # noqa: PLC0415
    from ..parallel.pipeline import Devices, run_pipeline  # noqa: PLC0415

    pipe = Pipeline.read(args.pipeline)
    items = _pipeline_items(pipe, args)
    devices = Devices.parse(args.devices, token_file=args.rpc_token_file)
    run = run_pipeline(args.pipeline, items, devices=devices, stage_timeout_s=args.stage_timeout)
    for k in range(len(pipe.stages)):
        print(f"stage {k} on {devices.describe(k)}")
    print(run.describe())
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        for name in pipe.model_outputs:
            np.save(args.output / f"{_safe(name)}.npy",
                    np.concatenate([o[name] for o in run.outputs]))
        print(f"wrote {len(pipe.model_outputs)} output(s) to {args.output}")
    if args.verify:
        import onnxruntime as ort  # noqa: PLC0415

        sess = ort.InferenceSession(str(args.verify), providers=["CPUExecutionProvider"])
        worst = 0.0
        for item, out in zip(items, run.outputs, strict=True):
            refs = sess.run(list(pipe.model_outputs), dict(item))
            for name, ref in zip(pipe.model_outputs, refs, strict=True):
                err = float(np.max(np.abs(out[name] - ref)) / max(np.max(np.abs(ref)), 1e-30))
                worst = max(worst, err)
        ok = worst <= args.rtol
        print(f"verify against {args.verify} (ONNX Runtime, unpartitioned): max rel err "
              f"{worst:.2e} over {len(items)} item(s): {'OK' if ok else 'FAILED'}")
        if not ok:
            raise VerificationError(f"pipeline outputs differ from the model's (max rel err "
                                    f"{worst:.2e} > {args.rtol:g})")
    return 0
