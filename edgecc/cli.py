"""The ``edgecc`` command line. Each subcommand registers its parser and a thin ``drive_<cmd>``
that calls the typed API; only :func:`main` exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .errors import EdgeccError, InputError, ModelError, OutputExistsError, VerificationError


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


# ----------------------------------------------------------------------------- compile


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


def register_compile(sub) -> None:
    p = sub.add_parser("compile", help="compile a model into a deployable artifact directory",
                       description="Import an ONNX model, run the pass pipeline, build a shared "
                       "library for the target and write OUT_DIR/model.so + OUT_DIR/model.json.")
    p.add_argument("model", nargs="?", help="the ONNX model file")
    p.add_argument("-t", "--target", default="x86_64",
                   help="named target, raw triple, or 'native' (this machine's CPU); default "
                   "x86_64; see 'edgecc targets'")
    p.add_argument("-o", "--output", type=Path, help="artifact directory to write")
    p.add_argument("--input-shape", action="append", type=parse_input_shape, default=[],
                   metavar="NAME=D0,D1,...", help="pin an input's shape (for dynamic dims); "
                   "repeatable")
    p.add_argument("--pipeline", help="pass pipeline (default: by target; see --list-passes)")
    p.add_argument("--print-ir-after", action="append", default=[], metavar="PASS",
                   help="print the IR after this pass ('all' for every pass); repeatable")
    p.add_argument("--list-passes", action="store_true", help="list passes and pipelines, exit")
    p.add_argument("--tuning-log", action="append", type=Path, default=[], metavar="DIR",
                   help="apply records from this tuning log too (written by 'edgecc tune'); "
                   "repeatable")
    p.add_argument("--no-shipped-logs", action="store_true",
                   help="do not use the shipped tuning_logs/ records (neither applied nor as "
                   "transfer-tuning donors)")
    p.add_argument("--no-rule-schedule", action="store_true",
                   help="convolutions and matrix products without a record of their own are not "
                   "tiled by the rule (they borrow a similar tuned kernel's schedule instead, "
                   "or keep the default)")
    p.add_argument("--no-transfer-tuning", action="store_true",
                   help="kernels without a record of their own keep the default schedule "
                   "instead of borrowing a similar tuned kernel's")
    p.add_argument("--no-isa-variants", action="store_true",
                   help="build for the target only: no extra builds for CPUs with more "
                   "features (x86_64 also carries an AVX-512 build, which the loader runs on "
                   "CPUs that have AVX-512; see 'edgecc targets')")
    _add_quantize_args(p)
    p.add_argument("-f", "--force", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--no-cache", action="store_true", help="bypass the compile cache")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(drive=drive_compile)


def _quantization(args):
    from .quantize import Quantization  # noqa: PLC0415

    if args.quantize is None:
        if args.calibration or args.per_channel or args.calibration_method != "minmax":
            raise EdgeccError("--calibration, --calibration-method and --per-channel go with "
                              "--quantize int8")
        return None
    return Quantization(args.quantize, calibration=args.calibration,
                        method=args.calibration_method, per_channel=args.per_channel)


def drive_compile(args) -> int:
    from .compiler import compile_model  # noqa: PLC0415

    if args.list_passes:
        from .passes import describe_pipelines  # noqa: PLC0415

        print(describe_pipelines())
        return 0
    if not args.model or not args.output:
        raise EdgeccError("compile needs a MODEL and -o OUT_DIR (see 'edgecc compile --help')")
    shapes = dict(args.input_shape)
    result = compile_model(
        args.model, target=args.target, output=args.output, input_shapes=shapes,
        pipeline=args.pipeline, print_ir_after=tuple(args.print_ir_after), force=args.force,
        use_cache=not args.no_cache, tuning_logs=tuple(args.tuning_log),
        use_shipped_logs=not args.no_shipped_logs,
        rule_schedule=not args.no_rule_schedule,
        transfer_tuning=not args.no_transfer_tuning, quantize=_quantization(args),
        isa_variants=not args.no_isa_variants, on_stage=None if args.quiet else _progress)
    m = result.manifest
    if result.cache_note and not args.quiet:
        print(f"[edgecc] cache entry was corrupt and has been rebuilt: {result.cache_note}",
              file=sys.stderr)
    how = "from cache" if result.cached else f"in {sum(result.timings.values()):.2f} s"
    size = (result.output / m.library).stat().st_size
    print(f"compiled {m.model_name} for {m.target} ({m.arch}, {m.device}) {how}: "
          f"{result.output}/{m.library} ({size / 1024:.1f} KiB)")
    for label, specs in (("inputs", m.inputs), ("outputs", m.outputs)):
        print(f"  {label}: " + ", ".join(s.describe() for s in specs))
    tuned, total = result.kernels
    if total:
        logs = m.options.get("tuning_logs") or []
        moved, ruled = result.transferred, result.rule_tiled
        print(f"  kernels: {tuned} tuned, {ruled} rule-tiled, {moved} transferred from similar "
              f"kernels, {total - tuned - moved - ruled} default schedule"
              + (f" (logs: {', '.join(logs)})" if logs else " (no tuning log for this target)"))
    for v in m.variants:
        k = v.kernels
        size = (result.output / v.library).stat().st_size
        print(f"  + {v.target} build: {result.output}/{v.library} ({size / 1024:.1f} KiB; "
              f"{k.get('tuned', 0)} of {k.get('total', 0)} kernels tuned), run instead on CPUs "
              f"with {', '.join(f for f in v.cpu_features if f not in m.cpu_features)}")
    if result.variant_note:
        print(f"  note: {result.variant_note}")
    for note in result.fallbacks:
        print(f"  fallback: {note}")
    _print_compression(m.options)
    quant = m.options.get("quantize") or {}
    if quant.get("mode") == "fp16" and m.device == "cpu" and m.arch == "x86_64":
        print("  note: x86 CPUs have no fp16 arithmetic: the fp16 artifact is half the weight "
              "size but slower than fp32 here; fp16 pays off on CUDA and ARMv8.2+ targets")
    return 0


def _print_compression(options) -> None:
    from .quantize import QuantReport  # noqa: PLC0415

    quant = options.get("quantize")
    weights = options.get("weights_bytes")
    if weights is not None:
        print(f"  weights: {weights / 1024:.1f} KiB" + (f" ({quant['mode']})" if quant else ""))
    if quant and quant.get("mode") == "int8":
        report = QuantReport(quant["quantized"], quant["fp32"], quant["samples"])
        scales = "per channel" if quant["per_channel"] else "per tensor"
        print(f"  int8 ({quant['method']}, {scales}"
              f", {quant['samples']} calibration samples): {report.describe()}")
        print(f"  QDQ model (runs in ONNX Runtime for comparison): {quant['qdq_model']}")


# ----------------------------------------------------------------------------- tune


def register_tune(sub) -> None:
    p = sub.add_parser("tune", help="auto-tune a model's kernels for a target (MetaSchedule)",
                       description="Tune the fused kernels of MODEL for TARGET with MetaSchedule "
                       "and an XGBoost cost model, locally or on a device behind a TVM RPC "
                       "tracker. Records go to a tuning log (default tuning_logs/<target>/) that "
                       "'edgecc compile' applies. Re-running resumes; Ctrl-C keeps every record.")
    p.add_argument("model", help="the ONNX model file")
    p.add_argument("-t", "--target", default="x86_64",
                   help="named target, raw triple, or 'native' (this machine's CPU)")
    p.add_argument("--trials", type=int, default=64, metavar="N",
                   help="trials per task (default 64); tasks already at N are skipped")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="stop after this long, keeping all records (e.g. 90s, 10m, 1h)")
    p.add_argument("--log-dir", type=Path, help="tuning log directory (default "
                   "tuning_logs/<target>/)")
    p.add_argument("--input-shape", action="append", type=parse_input_shape, default=[],
                   metavar="NAME=D0,D1,...", help="pin an input's shape; repeatable")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on a device registered "
                   "with this TVM RPC tracker")
    p.add_argument("--rpc-key", help="the device key at the tracker")
    p.add_argument("--rpc-token-file", metavar="F", help="the device's token file (what "
                   "edgecc-run serve made on its first start; copy it from the device)")
    p.add_argument("--num-cores", type=int, help="the device's core count (default: this "
                   "machine's physical cores; over RPC: what edgecc-run serve reports, else 4)")
    p.add_argument("--keep-best", type=int, metavar="N", help="afterwards, keep only the N "
                   "fastest records per kernel (small logs to ship; trial counts are kept)")
    p.add_argument("--select-in-model", type=int, metavar="K", help="afterwards, compile the "
                   "model with each kernel's K fastest records, time every kernel inside the "
                   "model, and keep per kernel the record that is fastest there (checked end to "
                   "end; runs on this machine, not over RPC)")
    p.add_argument("--no-transfer-seeds", dest="transfer_seeds", action="store_false",
                   help="start each task's search from random samples only, without first "
                   "measuring the schedules of similar tuned kernels in the logs")
    p.add_argument("--cache-flush", action=argparse.BooleanOptionalAction, default=None,
                   help="time each candidate with the CPU caches flushed before every run, but "
                   "for the kernel's input: its weights come from memory, as inside a model "
                   "(the default for a new log); --no-cache-flush times repeated runs on warm "
                   "buffers. An existing log is resumed the way it was timed")
    _add_quantize_args(p)
    p.add_argument("-q", "--quiet", action="store_true", help="only the final summary")
    p.set_defaults(drive=drive_tune)


def drive_tune(args) -> int:
    from .tune import RPCSettings, parse_duration, tune_model  # noqa: PLC0415

    rpc = None
    if args.rpc_tracker or args.rpc_key:
        rpc = RPCSettings.parse(args.rpc_tracker or "", args.rpc_key or "",
                                token_file=args.rpc_token_file)
    budget = parse_duration(args.time_budget) if args.time_budget else None
    select = args.select_in_model
    if select is not None:
        from .selection import check_runs_here  # noqa: PLC0415
        from .targets import get_target  # noqa: PLC0415

        if select < 2:
            raise EdgeccError("--select-in-model needs K >= 2 (records compared per kernel)")
        if rpc is not None:
            raise EdgeccError("--select-in-model runs the model on this machine; it does not "
                              "go with --rpc-tracker")
        check_runs_here(get_target(args.target))
    log = (lambda msg: None) if args.quiet else (  # noqa: E731
        lambda msg: print(msg, file=sys.stderr, flush=True))
    keep = args.keep_best
    r = tune_model(args.model, target=args.target, trials_per_task=args.trials,
                   time_budget_s=budget, log_dir=args.log_dir, input_shapes=dict(args.input_shape),
                   rpc=rpc, num_cores=args.num_cores, on_progress=log,
                   keep_best=max(keep, select or 0) if keep else None,
                   quantize=_quantization(args), transfer_seeds=args.transfer_seeds,
                   cache_flush=args.cache_flush)
    width = max([len(t.name) for t in r.tasks] + [4])
    print(f"{'task':<{width}}  weight  trials  best (us)")
    for t in r.tasks:
        best = f"{t.best_us:10.2f}" if t.best_us is not None else "       n/a"
        print(f"{t.name:<{width}}  {t.weight:6.0f}  {t.done_before + t.measured:6d}  {best}")
    est = r.estimate_ms()
    measured = r.trials_run + r.seeded
    per100 = f", {r.seconds / measured * 100:.1f} s per 100 trials" if measured else ""
    seeds = f" (+{r.seeded} seeds: transferred and rule-based schedules)" if r.seeded else ""
    print(f"{r.trials_run} trials{seeds} in {r.seconds:.1f} s{per100}; {r.skipped} task(s) "
          f"already tuned; {r.records_added} records added to {r.log_dir}")
    if est is not None:
        print(f"estimated end-to-end kernel time: {est:.3f} ms")
    if r.stopped:
        print(f"stopped early ({r.stopped}): every record measured so far is kept; "
              "re-run the same command to continue")
        return 130 if r.stopped == "interrupted" else 0
    if select is not None:
        _select_in_model(args, select, r.log_dir, log)
    return 0


def _select_in_model(args, candidates: int, log_dir: Path, log) -> None:
    from .selection import select_in_model  # noqa: PLC0415

    s = select_in_model(args.model, target=args.target, log_dir=log_dir, candidates=candidates,
                        input_shapes=dict(args.input_shape), quantize=_quantization(args),
                        on_progress=log)
    if s.kept is None:
        print(f"in-model selection: nothing to choose (one record per kernel in {log_dir})")
        return

    def us(times) -> str:  # inf: not seen in the model's run (merged into another kernel)
        return " ".join(f"{t:7.1f}" if t != float("inf") else "    n/a" for t in times)

    width = max([len(k.name) for k in s.kernels] + [6])
    print(f"{'kernel':<{width}}  alone (us, by rank)       in the model (us, by rank)  chosen")
    for k in s.kernels:
        alone, inside = us(k.isolated_us), us(k.in_model_us)
        print(f"{k.name:<{width}}  {alone:<24}  {inside:<26}  {k.chosen + 1}")
    e2e = ", ".join(f"{label} {ms:.3f} ms" for label, ms in s.end_to_end_ms.items())
    print(f"end to end: {e2e}; the log keeps {s.kept}'s records ({s.changed} kernel(s) not on "
          f"their fastest-alone record; {s.dropped} records dropped)")


# ----------------------------------------------------------------------------- targets


def register_targets(sub) -> None:
    p = sub.add_parser("targets", help="list the named targets",
                       description="List the named targets (one JSON file each under targets/).")
    p.add_argument("--json", action="store_true", help="print the target files as JSON")
    p.set_defaults(drive=drive_targets)


def drive_targets(args) -> int:
    import json  # noqa: PLC0415

    from .targets import list_targets, native_target_name  # noqa: PLC0415

    targets = list_targets()
    if args.json:
        print(json.dumps([t.to_dict() for t in targets], indent=2))
        return 0
    width = max(len(t.name) for t in targets)
    for t in targets:
        extra = f" (also: {', '.join(t.aliases)})" if t.aliases else ""
        extra += "".join(f"; artifacts carry a {v} build too, run on CPUs that can"
                         for v in t.variants)
        print(f"{t.name:<{width}}  {t.arch:<8} {t.kind:<5} {t.description}{extra}")
    try:
        print(f"native: {native_target_name()} on this machine")
    except EdgeccError as e:
        print(f"native: none ({e})")
    return 0


# ----------------------------------------------------------------------------- run


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
    from .manifest import Manifest  # noqa: PLC0415
    from .runtime import load, random_inputs  # noqa: PLC0415

    remote = _rpc_settings(args)
    specs = Manifest.read(args.artifact).inputs if args.artifact.is_dir() else ()
    m = None if remote else load(args.artifact, build=args.build)
    if m is not None and m.manifest.variants:
        print(f"running the {m.build} build")
    feed = load_inputs(args.input) if args.input else random_inputs(specs, seed=args.seed)
    if not args.input:
        print("no --input given: using random inputs (seed %d)" % args.seed)
    bench = None
    if remote:
        from .remote import run_remote  # noqa: PLC0415

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


def _add_build_arg(p) -> None:
    p.add_argument("--build", metavar="TARGET",
                   help="which of the artifact's builds to run (x86_64 artifacts carry an "
                   "AVX-512 build too): default, the best this CPU can run")


def _rpc_settings(args):
    if not (args.rpc_tracker or args.rpc_key):
        return None
    if getattr(args, "build", None):
        raise InputError("--build chooses among the builds run on this machine; an RPC device "
                         "runs the artifact's model.so")
    from .tune import RPCSettings  # noqa: PLC0415

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


# ----------------------------------------------------------------------------- bench


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
    from .manifest import Manifest  # noqa: PLC0415
    from .runtime import load, random_inputs  # noqa: PLC0415

    if args.repeat < 1 or args.number < 1:
        raise InputError("--repeat and --number must be at least 1")
    remote = _rpc_settings(args)
    if remote:
        from .remote import run_remote  # noqa: PLC0415

        feed = random_inputs(Manifest.read(args.artifact).inputs)
        ran = run_remote(args.artifact, remote, feed, bench_repeat=args.repeat,
                         bench_number=args.number)
        result, where = ran.bench, ran.where(remote)
    else:
        m = load(args.artifact, build=args.build)
        result = m.benchmark(repeat=args.repeat, number=args.number)
        where = "this machine" + (f" ({m.build} build)" if m.manifest.variants else "")
    print(f"{args.artifact} on {where}: {result.format()}")
    return 0


# ----------------------------------------------------------------------------- rpc


def register_rpc(sub) -> None:
    p = sub.add_parser("rpc", help="TVM RPC devices: status of a tracker",
                       description="Inspect devices registered with a TVM RPC tracker.")
    rsub = p.add_subparsers(dest="rpc_command", metavar="SUBCOMMAND", required=True)
    s = rsub.add_parser("status", help="list devices and queues at a tracker")
    s.add_argument("--tracker", required=True, metavar="HOST:PORT")
    s.set_defaults(drive=drive_rpc_status)


def drive_rpc_status(args) -> int:
    from .remote import tracker_status  # noqa: PLC0415
    from .tune import RPCSettings  # noqa: PLC0415

    settings = RPCSettings.parse(args.tracker, "-")
    print(tracker_status(settings.tracker_host, settings.tracker_port).format())
    return 0


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ----------------------------------------------------------------------------- verify


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
    from .verify import verify_artifact  # noqa: PLC0415

    report = verify_artifact(args.artifact, args.model, rtol=args.rtol, seed=args.seed)
    print(report.format())
    if not report.passed:
        raise VerificationError(f"outputs differ from ONNX Runtime beyond rel {args.rtol:g}")
    return 0


# ----------------------------------------------------------------------------- package


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
    from .package import package_artifact  # noqa: PLC0415

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result = package_artifact(args.artifact, args.output, force=args.force,
                              strip=not args.no_strip, log=log)
    print(f"bundle: {result.path}")
    print(result.format())
    return 0


# ----------------------------------------------------------------------------- prune / distill

def _check_output_file(path: Path, *, force: bool) -> None:
    if path.exists() and not force:
        raise OutputExistsError(f"'{path}' already exists (use --force to replace it)")


def _onnx_model_arg(path: Path, verb: str, input_shapes=()):
    from .frontend import read_onnx  # noqa: PLC0415

    if path.suffix in (".pt", ".pth"):
        from .onnx_torch import module_to_onnx  # noqa: PLC0415

        return module_to_onnx(path, dict(input_shapes))
    if path.suffix == ".pt2":
        raise ModelError(f"{verb} takes ONNX or a torch.save'd nn.Module (.pt); for an exported "
                         "program (.pt2) export to ONNX first (torch.onnx.export)")
    return read_onnx(path)[0]


def register_prune(sub) -> None:
    p = sub.add_parser("prune", help="prune a model's weights (L1, unstructured or by channel)",
                       description="l1-unstructured: global L1 magnitude pruning of every "
                       "Conv/Gemm/MatMul weight (torch.nn.utils.prune); zeros, same shapes. "
                       "l1-structured: remove the conv output channels with the smallest L1 norm "
                       "(and the matching BN entries and next-layer inputs): fewer FLOPs, faster "
                       "kernels. Fine-tune or distill afterwards ('edgecc distill').")
    p.add_argument("model", type=Path, help="the ONNX model, or a whole torch.nn.Module saved "
                   "with torch.save (.pt, exported to ONNX first: needs --input-shape)")
    p.add_argument("--input-shape", action="append", type=parse_input_shape, default=[],
                   metavar="NAME=D0,D1,...", help="input name and shape for a .pt model")
    p.add_argument("--sparsity", type=float, required=True,
                   help="fraction of weights (unstructured) or channels (structured), in (0, 1)")
    p.add_argument("--method", choices=("l1-unstructured", "l1-structured"),
                   default="l1-unstructured", help="default: l1-unstructured")
    p.add_argument("-o", "--output", type=Path, required=True, help="pruned ONNX model to write")
    p.add_argument("-f", "--force", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(drive=drive_prune)


def drive_prune(args) -> int:
    from .prune import check_sparsity, prune  # noqa: PLC0415

    from ._util import atomic_write_bytes  # noqa: PLC0415

    check_sparsity(args.sparsity)
    _check_output_file(args.output, force=args.force)
    pruned, report = prune(_onnx_model_arg(args.model, "prune", args.input_shape),
                           sparsity=args.sparsity, method=args.method)
    atomic_write_bytes(args.output, pruned.SerializeToString())
    print(report.describe())
    print(f"wrote {args.output}")
    return 0


def register_distill(sub) -> None:
    p = sub.add_parser("distill", help="fine-tune a student model against a teacher (KD)",
                       description="Knowledge distillation (Hinton): train the student ONNX model "
                       "on DATA with loss alpha*T^2*KL(teacher/T || student/T) + (1-alpha)*CE. "
                       "--alpha 0 is plain fine-tuning on the labels (no teacher needed). "
                       "--nproc N trains with N processes (torch DDP, gloo).")
    p.add_argument("--teacher", type=Path, help="teacher ONNX model")
    p.add_argument("--student", type=Path, required=True, help="student ONNX model (e.g. pruned)")
    p.add_argument("--data", required=True,
                   help="'digits' (bundled with scikit-learn) or an .npz with arrays x and y")
    p.add_argument("--test-data", help="data to report accuracy on (default: the digits test "
                   "split when --data digits)")
    p.add_argument("-o", "--output", type=Path, required=True, help="trained student to write")
    p.add_argument("--temperature", type=float, default=4.0, help="softmax temperature (default 4)")
    p.add_argument("--alpha", type=float, default=0.7,
                   help="weight of the soft (teacher) loss, in [0, 1] (default 0.7)")
    p.add_argument("--epochs", type=int, default=30, help="default 30")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--nproc", type=int, default=1, help="training processes (DDP, default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-f", "--force", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(drive=drive_distill)


def drive_distill(args) -> int:
    from . import datasets  # noqa: PLC0415
    from .distill import DistillConfig, distill  # noqa: PLC0415

    config = DistillConfig(temperature=args.temperature, alpha=args.alpha, epochs=args.epochs,
                           lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                           nproc=args.nproc)
    _check_output_file(args.output, force=args.force)
    for path in (args.teacher, args.student):
        if path is not None:
            _onnx_model_arg(path, "distill")
    train = datasets.load(args.data, split="train")
    test_spec = args.test_data or (args.data if args.data in datasets.BUILTIN else None)
    test = datasets.load(test_spec, split="test") if test_spec else None
    print(f"[edgecc] training {args.student} on {len(train)} samples, {args.epochs} epochs, "
          f"{args.nproc} process(es), alpha {args.alpha}, T {args.temperature}", file=sys.stderr)
    r = distill(args.teacher if args.alpha > 0 else None, args.student, data=train,
                output=args.output, test=test, config=config, verbose=True)
    print(f"wrote {r.output} in {r.seconds:.1f} s ({r.nproc} process(es))")
    if r.student_accuracy is not None:
        line = f"  test accuracy: student {r.student_accuracy * 100:.2f}%"
        if r.teacher_accuracy is not None:
            line += (f", teacher {r.teacher_accuracy * 100:.2f}% "
                     f"({(r.student_accuracy - r.teacher_accuracy) * 100:+.2f} points)")
        print(line)
    return 0


# ----------------------------------------------------------------------------- partition / pipeline

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
    from .partition import partition  # noqa: PLC0415

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


def _missing_action(parser) -> int:
    parser.print_help()
    return 2


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
    from .partition import Pipeline  # noqa: PLC0415
    from .pipeline import Devices, run_pipeline  # noqa: PLC0415

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


# ----------------------------------------------------------------------------- main

REGISTER = (register_compile, register_tune, register_targets, register_run, register_bench,
            register_verify, register_package, register_prune, register_distill,
            register_partition, register_pipeline, register_rpc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecc", description="Compile trained models (ONNX) with TVM into deployable "
        "artifacts for edge targets (x86_64, aarch64 boards, CUDA).")
    parser.add_argument("--version", action="version", version=f"edgecc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTER:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.drive(args)
    except EdgeccError as e:
        _err(str(e))
        return 1
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
