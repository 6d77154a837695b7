"""``edgecc compile`` and ``edgecc targets``."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import EdgeccError
from .common import _progress, parse_input_shape, _add_quantize_args, _quantization


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


def drive_compile(args) -> int:
    from ..build.compiler import compile_model  # noqa: PLC0415

    if args.list_passes:
        from ..passes import describe_pipelines  # noqa: PLC0415

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
    from ..compress.quantize import QuantReport  # noqa: PLC0415

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


def register_targets(sub) -> None:
    p = sub.add_parser("targets", help="list the named targets",
                       description="List the named targets (one JSON file each under targets/).")
    p.add_argument("--json", action="store_true", help="print the target files as JSON")
    p.set_defaults(drive=drive_targets)


def drive_targets(args) -> int:
    import json  # noqa: PLC0415

    from ..targets import list_targets, native_target_name  # noqa: PLC0415

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
