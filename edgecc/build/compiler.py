"""The compile API: import -> passes -> build -> package, with the compile cache in front."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .. import frontend, passes
from .._version import __version__
from . import cache
from ..schedules import tuning_log
from ..schedules.trace import kernel_flops
from .._util import StageCallback, atomic_dir, check_output_dir, sha256_file, stage
from .library import build_library, check_toolchain
from ..errors import CompileError, EdgeccError
from ..artifact.manifest import LIBRARY_NAME, Manifest, Variant
from ..passes import fallback
from ..targets import Target, get_target, variant_targets

QDQ_MODEL = "model.qdq.onnx"


class Quantizer(Protocol):
    """What a compile asks of a quantization request.
    :class:`edgecc.compress.quantize.Quantization` is one: compression calls the compile, and
    the compile calls the request it is handed without importing compression."""
    mode: str  # "int8" or "fp16" (fp16 is a pass)
    method: str
    per_channel: bool

    def cache_key(self) -> dict: ...

    def calibration_feeds(self, source, *, shapes: dict[str, tuple[int, ...]]) -> list | None:
        """The checked calibration feeds (None unless int8), before any work is done."""

    def to_int8(self, raw: bytes, feeds: list) -> tuple[bytes, dict]:
        """(the calibrated QDQ model, its report for the manifest)."""


@dataclass(frozen=True)
class CompileResult:
    output: Path
    manifest: Manifest
    cached: bool
    timings: dict[str, float] = field(default_factory=dict)
    cache_note: str | None = None
    variant_note: str | None = None  # why the target's ISA variants were not built

    @property
    def kernels(self) -> tuple[int, int]:
        """(tuned, total) kernels, from the manifest: tuned counts the kernels with a record of
        their own (see :attr:`transferred` for the ones scheduled from a similar kernel's)."""
        k = self.manifest.options.get("kernels") or {}
        return k.get("tuned", 0), k.get("total", 0)

    @property
    def transferred(self) -> int:
        """Kernels scheduled with a similar kernel's record (the transfer-tuning pass)."""
        return (self.manifest.options.get("kernels") or {}).get("transferred", 0)

    @property
    def fallbacks(self) -> list[str]:
        """What edgecc's optimizations left unoptimized in this model, and why."""
        return list(self.manifest.options.get("fallbacks") or [])

    @property
    def rule_tiled(self) -> int:
        """Kernels scheduled by the tiling rule (the rule-schedule pass)."""
        return (self.manifest.options.get("kernels") or {}).get("rule", 0)


def compile_model(
    model,
    *,
    target: str | Target = "x86_64",
    output: str | Path,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Sequence[Any] | None = None,
    pipeline: str | None = None,
    print_ir_after: Sequence[str] = (),
    force: bool = False,
    use_cache: bool = True,
    tuning_logs: Sequence[str | Path] = (),
    use_shipped_logs: bool = True,
    rule_schedule: bool = True,
    transfer_tuning: bool = True,
    quantize: Quantizer | None = None,
    isa_variants: bool = True,
    on_stage: StageCallback | None = None,
    emit_ir: Callable[[str], None] = print,
) -> CompileResult:
    """Compile ``model`` for ``target`` into the artifact directory ``output``.

    ``model`` is an ONNX file path, an ``onnx.ModelProto``, or a ``torch.nn.Module`` (then
    ``example_inputs`` is required). ``output`` receives ``model.so`` (weights baked in) and
    ``model.json`` (the manifest). The directory is written atomically: a failed compile leaves
    nothing behind. ``on_stage(name, seconds)`` is called as each stage finishes.

    Tuning records from ``tuning_logs/<target>/`` (unless ``use_shipped_logs=False``) and from
    each directory in ``tuning_logs`` are applied to the kernels they match; with
    ``rule_schedule`` (default) the convolutions and matrix products left are tiled by a rule
    (see :mod:`edgecc.schedules.rule_tiling`); with ``transfer_tuning`` (default) the kernels still left
    get the schedule of the most similar tuned kernel (see :mod:`edgecc.schedules.transfer`), else a
    default schedule.

    ``quantize`` (see :class:`edgecc.compress.quantize.Quantization`) compiles an int8 (calibrated, QDQ,
    ONNX models only) or fp16 variant; the int8 QDQ model is kept as ``model.qdq.onnx``.

    With ``isa_variants`` (default), a target that lists variants (``x86_64``: an AVX-512 build)
    gets the model built for each of them too, with their own shipped logs, as
    ``model.<variant>.so``; the loader runs the first one the CPU can. Not when ``tuning_logs``
    are given: those records are for ``target`` only.
    """
    opts = CompileOptions(
        target=target if isinstance(target, Target) else get_target(target),
        input_shapes={k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()},
        example_inputs=example_inputs, pipeline=pipeline, print_ir_after=tuple(print_ir_after),
        force=force, use_cache=use_cache, tuning_logs=tuple(Path(p) for p in tuning_logs),
        use_shipped_logs=use_shipped_logs, rule_schedule=rule_schedule,
        transfer_tuning=transfer_tuning, quantize=quantize, isa_variants=isa_variants)
    output = Path(output)
    src = frontend.model_source(model, example_inputs=example_inputs)
    # int8 compute: calibrated here, or a QDQ model quantized by another tool (ORT's U8S8...)
    int8 = (quantize is not None and quantize.mode == "int8") or (
        src.raw is not None and b"DequantizeLinear" in src.raw)
    plan = _plan(opts, output, int8=int8)
    calibration = (None if quantize is None
                   else quantize.calibration_feeds(src, shapes=opts.input_shapes))
    timings: dict[str, float] = {}

    def timed(stage_name: str, seconds: float) -> None:
        timings[stage_name] = seconds
        if on_stage is not None:
            on_stage(stage_name, seconds)

    key = _cache_key(plan, opts, src)
    note = None
    if key is not None:
        with stage("cache-lookup", timed):
            manifest, note = _from_cache(key, plan, output, force=force)
        if manifest is not None:
            return CompileResult(output=output, manifest=manifest, cached=True, timings=timings,
                                 variant_note=plan.variant_note)
    with atomic_dir(output, force=force) as tmp:
        source, quant_info = _quantize(src, calibration, quantize, tmp, timed)
        with fallback.collecting() as fallbacks:
            with stage("import", timed):
                imported = frontend.import_model(model, src, raw=source, shapes=opts.input_shapes,
                                                 example_inputs=example_inputs)
                if source is not src.raw:  # the manifest names the user's model, not its QDQ copy
                    imported = replace(imported, sha256=hashlib.sha256(src.raw).hexdigest())
            result, kernels, weights = _lower_and_build(
                imported.mod, plan.pass_names, plan.target, tmp, logs=plan.logs,
                cross_logs=plan.cross_logs, print_ir_after=opts.print_ir_after, emit_ir=emit_ir,
                timed=timed)
            # passes are pure: the one imported module serves every build
            built = [_build_variant(imported.mod, v, tmp, choice=plan.choice,
                                    logs=plan.variant_logs[v.name], timed=timed,
                                    emit_ir=emit_ir)
                     for v in plan.variants]
        with stage("export", timed):
            manifest = _export(tmp, plan, imported, result, kernels=kernels, weights=weights,
                               quant_info=quant_info, fallbacks=list(fallbacks), variants=built)
    if key is not None:
        cache.store(key, output)
    return CompileResult(output=output, manifest=manifest, cached=False, timings=timings,
                         cache_note=note, variant_note=plan.variant_note)


@dataclass(frozen=True)
class CompileOptions:
    """Everything :func:`compile_model` was asked, normalized (shapes as int tuples, paths)."""
    target: Target
    input_shapes: dict[str, tuple[int, ...]]
    example_inputs: Sequence[Any] | None
    pipeline: str | None
    print_ir_after: tuple[str, ...]
    force: bool
    use_cache: bool
    tuning_logs: tuple[Path, ...]
    use_shipped_logs: bool
    rule_schedule: bool
    transfer_tuning: bool
    quantize: Quantizer | None
    isa_variants: bool


@dataclass(frozen=True)
class _Plan:
    """What a compile will do, decided before any work: passes, logs and extra builds."""
    target: Target
    choice: _PipelineChoice
    pipeline_name: str
    pass_names: tuple[str, ...]
    logs: list[Path]
    cross_logs: list[Path]
    variants: list[Target]
    variant_logs: dict[str, tuple[list[Path], list[Path]]]
    variant_note: str | None


def _plan(opts: CompileOptions, output: Path, *, int8: bool) -> _Plan:
    """Check the output, the toolchains and the pass names; choose passes, logs and variants."""
    tgt = opts.target
    check_output_dir(output, force=opts.force)
    check_toolchain(tgt)
    choice = _PipelineChoice(pipeline=opts.pipeline, quantize=opts.quantize,
                             rule_schedule=opts.rule_schedule,
                             transfer_tuning=opts.transfer_tuning,
                             use_shipped_logs=opts.use_shipped_logs)
    pipeline_name, pass_names = choice.passes_for(tgt)
    passes.check_pass_names(opts.print_ir_after)
    variants, variant_note = [], None
    wanted = variant_targets(tgt, int8=int8) if opts.isa_variants else []
    if wanted:
        if opts.tuning_logs:
            variant_note = (f"no {', '.join(v.name for v in wanted)} build: the --tuning-log "
                            f"records are for {tgt.name} only")
        else:
            variants = wanted
            for v in variants:
                check_toolchain(v)
    logs, cross_logs = choice.logs_for(tgt, extra=opts.tuning_logs)
    return _Plan(target=tgt, choice=choice, pipeline_name=pipeline_name, pass_names=pass_names,
                 logs=logs, cross_logs=cross_logs, variants=variants,
                 variant_logs={v.name: choice.logs_for(v) for v in variants},
                 variant_note=variant_note)


def _cache_key(plan: _Plan, opts: CompileOptions, src) -> str | None:
    """The compile cache's key for this compile (None: not cached, e.g. a torch module)."""
    if not opts.use_cache or src.raw is None or opts.print_ir_after:
        return None
    options = {"input_shapes": {k: list(v) for k, v in sorted(opts.input_shapes.items())},
               "pipeline": list(plan.pass_names), "tuning": tuning_log.fingerprint(plan.logs),
               "donors": tuning_log.fingerprint(plan.cross_logs),
               "quantize": opts.quantize.cache_key() if opts.quantize else None,
               "variants": {name: [tuning_log.fingerprint(logs) for logs in pair]
                            for name, pair in plan.variant_logs.items()}}
    return cache.cache_key(model_sha256=hashlib.sha256(src.raw).hexdigest(),
                           target=plan.target.to_dict(), options=options,
                           edgecc_version=__version__)


def _from_cache(key: str, plan: _Plan, output: Path, *, force: bool
                ) -> tuple[Manifest | None, str | None]:
    """(the manifest of the cached artifact copied to ``output``, None) on a hit; (None, why
    the entry was dropped, or None) on a miss."""
    hit, note = cache.lookup(key)
    if hit is None:
        return None, note
    cache.copy_out(hit, output, force=force)
    manifest = Manifest.read(output)
    here = [str(p) for p in plan.logs]  # same contents (fingerprint), maybe other paths
    if manifest.options.get("tuning_logs") != here:
        manifest = replace(manifest, options={**manifest.options, "tuning_logs": here})
        manifest.write(output)
    return manifest, note


def _quantize(src, calibration, quantize: Quantizer | None, tmp: Path, timed
              ) -> tuple[bytes | None, dict | None]:
    """(the model bytes to import, the manifest's quantization record): int8 calibrates a QDQ
    copy of the model (kept in the artifact), fp16 happens in the passes."""
    if calibration is None:
        return src.raw, ({"mode": quantize.mode} if quantize is not None else None)
    with stage("quantize", timed):
        source, report = quantize.to_int8(src.raw, calibration)
        (tmp / QDQ_MODEL).write_bytes(source)
    return source, {"mode": "int8", "method": quantize.method,
                    "per_channel": quantize.per_channel, "qdq_model": QDQ_MODEL, **report}


def _export(tmp: Path, plan: _Plan, imported, result, *, kernels, weights, quant_info,
            fallbacks: list[str], variants: list[Variant]) -> Manifest:
    tgt = plan.target
    manifest = Manifest(
        model_name=imported.name, model_sha256=imported.sha256, target=tgt.name,
        arch=tgt.arch, device=tgt.device, tvm_target=tgt.target_json(),
        tvm_version=cache.tvm_version(), edgecc_version=__version__,
        inputs=imported.inputs, outputs=imported.outputs, passes=plan.pass_names,
        library=LIBRARY_NAME, library_sha256=sha256_file(result.library),
        library_bytes=result.library.stat().st_size,
        options={"pipeline": plan.pipeline_name,
                 "cuda_fatbin": result.cuda_fatbin.name if result.cuda_fatbin else None,
                 "kernels": kernels,
                 "weights_bytes": weights,
                 "quantize": quant_info,
                 "tuning_logs": [str(p) for p in plan.logs],
                 "fallbacks": fallbacks},
        cpu_features=tgt.cpu_features, variants=tuple(variants),
    )
    manifest.write(tmp)
    return manifest


@dataclass(frozen=True)
class _PipelineChoice:
    """The compile options that pick passes and logs, applied alike to every build."""
    pipeline: str | None
    quantize: Quantizer | None
    rule_schedule: bool
    transfer_tuning: bool
    use_shipped_logs: bool

    def passes_for(self, tgt: Target) -> tuple[str, tuple[str, ...]]:
        """The pipeline's name and its passes for ``tgt``, with the options applied."""
        pipeline_name = self.pipeline or passes.default_pipeline(tgt)
        pass_names = passes.with_quantization(passes.resolve(pipeline_name, tgt),
                                              self.quantize.mode if self.quantize else None)
        off = {passes.RULE_AT: not self.rule_schedule,
               passes.TRANSFER_AT: not self.transfer_tuning}
        return pipeline_name, tuple(n for n in pass_names if not off.get(n))

    def logs_for(self, tgt: Target, *, extra: tuple[Path, ...] = ()
                 ) -> tuple[list[Path], list[Path]]:
        """The logs a build for ``tgt`` applies (its shipped logs, then ``extra``) and its
        transfer donors."""
        _, pass_names = self.passes_for(tgt)
        shipped = self.use_shipped_logs
        return ((tuning_log.logs_for_compile(tgt, extra, use_shipped=shipped)
                 if passes.TUNE_AT in pass_names else []),
                (tuning_log.donor_logs(tgt, use_shipped=shipped)
                 if passes.TRANSFER_AT in pass_names else []))


def _lower_and_build(mod, pass_names, tgt: Target, out_dir: Path, *, logs, cross_logs,
                     print_ir_after, emit_ir, timed, name: str = LIBRARY_NAME, label: str = ""):
    """Passes and build of ``mod`` into ``out_dir/name``: (BuildResult, kernel counts, weight
    bytes). If the optimized pipeline fails inside TVM, the model is built again with the
    required passes only (TVM's own lowering) and the fallback is reported; a failure there is
    a :class:`CompileError` naming the stage."""
    try:
        with stage(f"passes{label}", timed):
            lowered, kernels = _run_passes(mod, pass_names, tgt, logs=logs,
                                           cross_logs=cross_logs,
                                           print_ir_after=print_ir_after, emit_ir=emit_ir)
        with stage(f"build{label}", timed):
            result = _build(lowered, tgt, out_dir, name=name)
        return result, kernels, constant_bytes(lowered)
    except EdgeccError as e:
        if not isinstance(e, CompileError):
            raise
        failure = str(e)
    plain = passes.required_only(pass_names)
    if tuple(plain) == tuple(pass_names):
        raise CompileError(failure)
    left_out = dict.fromkeys(n for n in pass_names if n not in plain)  # once each, in order
    fallback.report(f"the optimized build failed ({failure}); built with the required passes "
                    f"only ({', '.join(left_out)} left out)")
    with stage(f"passes{label} (plain)", timed):
        lowered, kernels = _run_passes(mod, plain, tgt, logs=[], cross_logs=[],
                                       print_ir_after=(), emit_ir=emit_ir)
    with stage(f"build{label} (plain)", timed):
        result = _build(lowered, tgt, out_dir, name=name)
    return result, kernels, constant_bytes(lowered)


def _build(lowered, tgt: Target, out_dir: Path, *, name: str):
    """:func:`build_library`, a failure inside TVM named as the build stage's."""
    try:
        return build_library(lowered, tgt, out_dir, name=name)
    except EdgeccError:
        raise
    except Exception as e:  # noqa: BLE001  (codegen and linking raise many types)
        raise CompileError.from_tvm(f"build for {tgt.name}", e) from e


def _build_variant(mod, tgt: Target, out_dir: Path, *, choice: _PipelineChoice,
                   logs: tuple[list[Path], list[Path]], timed=None,
                   emit_ir: Callable[[str], None] = print) -> Variant:
    """Build the imported ``mod`` for the variant target ``tgt`` into ``model.<tgt>.so``, with
    ``logs`` (its own shipped logs, its transfer donors)."""
    _, pass_names = choice.passes_for(tgt)
    result, kernels, _ = _lower_and_build(
        mod, pass_names, tgt, out_dir, logs=logs[0], cross_logs=logs[1], print_ir_after=(),
        emit_ir=emit_ir, timed=timed, name=f"model.{tgt.name}.so", label=f" {tgt.name}")
    return Variant(target=tgt.name, library=result.library.name,
                   library_sha256=sha256_file(result.library), cpu_features=tgt.cpu_features,
                   library_bytes=result.library.stat().st_size,
                   tvm_target=tgt.target_json(), kernels=kernels)


def constant_bytes(mod) -> int:
    """Bytes of the constants (weights) left in the compiled module's Relax functions."""
    from tvm import relax  # noqa: PLC0415
    from tvm.ir.expr import GenericConst  # noqa: PLC0415  (a Relax constant in TVM 0.27)

    seen: dict[Any, int] = {}  # keyed by the object: a constant used twice counts once

    def visit(e):
        if isinstance(e, GenericConst) and hasattr(e.value, "shape"):
            t = e.value
            seen[e] = int(np.prod(t.shape, dtype=np.int64)) * np.dtype(str(t.dtype)).itemsize

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return sum(seen.values())


def count_kernels(mod) -> dict[str, Any]:
    """Kernels (TIR functions) in ``mod``: how many carry a tuned schedule of their own, how
    many one transferred from a similar kernel's record, how many the tiling rule scheduled;
    and under ``flops`` the floating-point (or integer) operations of each kind, ``default``
    for the kernels left to their default schedule."""
    from ..passes.rule_schedule import RULE  # noqa: PLC0415
    from ..passes.transfer_tuning import TRANSFERRED  # noqa: PLC0415

    counts = {"tuned": 0, "transferred": 0, "rule": 0}
    flops = {"tuned": 0, "transferred": 0, "rule": 0, "default": 0}
    total = 0
    for _, f in mod.functions.items():
        if type(f).__name__ != "PrimFunc":
            continue
        total += 1
        a = f.attrs if f.attrs is not None else {}
        if int(a.get("tirx.is_scheduled", 0)) != 1:
            kind = "default"
        else:
            kind = "transferred" if TRANSFERRED in a else "rule" if RULE in a else "tuned"
            counts[kind] += 1
        flops[kind] += kernel_flops(f)
    return {**counts, "total": total, "flops": flops}


def _run_passes(mod, pass_names, tgt: Target, *, logs, cross_logs=(), print_ir_after,
                emit_ir):
    """Run the pipeline with the tuning logs' database (and transfer donors) in effect; count
    kernels right after the tuning passes (later passes add weight-layout helpers that are
    folded away)."""
    from contextlib import nullcontext  # noqa: PLC0415

    from ..schedules.transfer import donors_from_records, using_donors  # noqa: PLC0415

    own = tuning_log.comparable_records(logs)
    db = tuning_log.memory_database(own)
    donors = []
    if passes.TRANSFER_AT in pass_names:
        donors = (donors_from_records(own, cross_target=False)
                  + donors_from_records(tuning_log.read_records(list(cross_logs)),
                                        cross_target=True))
    names = list(pass_names)
    last = max((names.index(p) for p in (passes.TUNE_AT, passes.RULE_AT, passes.TRANSFER_AT)
                if p in names),
               default=len(names) - 1)
    split = last + 1
    with db if db is not None else nullcontext(), using_donors(donors):
        mod = passes.apply(mod, pass_names[:split], target=tgt, print_ir_after=print_ir_after,
                           emit=emit_ir)
        kernels = count_kernels(mod)
        mod = passes.apply(mod, pass_names[split:], target=tgt, print_ir_after=print_ir_after,
                           emit=emit_ir)
    return mod, kernels
