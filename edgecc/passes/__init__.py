"""Passes and pipelines.

A pass is a small pure function ``run(mod, *, target) -> IRModule`` in a file of its own; it is
registered here as a ``PassInfo``. A pipeline is data: a named tuple of pass names. ``apply``
runs a pipeline one pass at a time, so any step's IR can be printed (``--print-ir-after``).

An *optional* pass (``OPTIONAL = True`` in its file: an optimization the model compiles without)
that fails is left out and the fallback reported (:mod:`.fallback`); a required pass that fails
raises :class:`~edgecc.errors.CompileError` naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import CompileError, EdgeccError
from ..targets import Target
from . import (
    annotate_patterns,
    apply_tuning,
    canonicalize,
    convert_layout,
    cpu_schedule,
    decompose_inference,
    decompose_qdq,
    dispatch_library,
    fast_math,
    fold_batchnorm,
    fold_constant,
    fallback,
    fuse,
    gpu_schedule,
    layout_free,
    legalize,
    lower_dataflow,
    pad_conv_channels,
    pad_int8_channels,
    pad_matmul,
    plan_memory,
    prepack_weights,
    qdq_to_int8,
    rule_schedule,
    to_fp16,
    transfer_tuning,
    vm_lower,
)

PassFn = Callable[..., Any]


@dataclass(frozen=True)
class PassInfo:
    name: str
    description: str
    run: PassFn
    optional: bool = False  # an optimization: the model compiles without it


PASSES: dict[str, PassInfo] = {
    m.NAME: PassInfo(m.NAME, m.DESCRIPTION, m.run, getattr(m, "OPTIONAL", False))
    for m in (qdq_to_int8, decompose_qdq, to_fp16, fold_batchnorm, decompose_inference, canonicalize,
              convert_layout, pad_conv_channels, pad_int8_channels, fold_constant, dispatch_library, fast_math,
              pad_matmul,
              legalize, annotate_patterns, fuse,
              layout_free, apply_tuning, rule_schedule, transfer_tuning, cpu_schedule,
              prepack_weights, gpu_schedule, lower_dataflow, plan_memory, vm_lower)
}

_FRONT = ("canonicalize", "fold-constant", "fold-batchnorm", "decompose-inference",
          "fold-constant")
_INT8 = ("qdq-to-int8", "decompose-qdq")
_LOWER = ("lower-dataflow", "plan-memory", "vm-lower")
PIPELINES: dict[str, tuple[str, ...]] = {
    # qdq-to-int8 and decompose-qdq do nothing to a float model; a QDQ model (--quantize int8,
    # or one quantized by another tool) computes in int8, channels-last
    "cpu-default": _INT8 + _FRONT + ("convert-layout", "pad-conv-channels", "pad-int8-channels",
                                     "dispatch-library", "fast-math", "pad-matmul", "legalize", "annotate-patterns",
                                     "fold-constant", "fuse", "layout-free", "apply-tuning",
                                     "rule-schedule", "transfer-tuning", "cpu-schedule",
                                     "prepack-weights") + _LOWER,
    "cuda-default": _FRONT + ("dispatch-library", "legalize", "annotate-patterns",
                              "fold-constant", "fuse", "gpu-schedule") + _LOWER,
}


TUNE_AT = "apply-tuning"  # the tuner extracts tasks from the IR just before this pass
RULE_AT = "rule-schedule"  # convs and matmuls without a record are tiled by a rule
TRANSFER_AT = "transfer-tuning"  # kernels still without a schedule borrow a similar one's


def required_only(names: Sequence[str]) -> tuple[str, ...]:
    """The pipeline ``names`` without its optional passes: TVM's own lowering of the model, what
    a compile falls back to when an optimized build fails."""
    return tuple(n for n in names if not PASSES[n].optional)


def tuning_prefix(names: Sequence[str]) -> tuple[str, ...]:
    """The passes that run before tuning: tasks are the kernels of the IR they produce, so
    records match at compile time exactly where ``apply-tuning`` runs."""
    if TUNE_AT not in names:
        raise EdgeccError(f"this pipeline has no {TUNE_AT} pass: it cannot use tuning logs")
    return tuple(names[: list(names).index(TUNE_AT)])


def default_pipeline(target: Target) -> str:
    return "cuda-default" if target.is_gpu else "cpu-default"


def resolve(pipeline: str, target: Target) -> tuple[str, ...]:
    if pipeline not in PIPELINES:
        raise EdgeccError(f"unknown pipeline {pipeline!r}; known: {', '.join(PIPELINES)}")
    names = PIPELINES[pipeline]
    if target.is_gpu and "gpu-schedule" not in names:
        raise EdgeccError(f"pipeline {pipeline!r} has no gpu-schedule pass; a CUDA target "
                          "needs one (use cuda-default)")
    return names


def with_quantization(names: Sequence[str], mode: str | None) -> tuple[str, ...]:
    """The pipeline ``names`` with the passes a quantization mode needs: ``qdq-to-int8`` first
    (before constant folding turns int8 weights back into fp32) and no layout conversion,
    ``to-fp16`` + a constant fold right after the front passes (before lowering)."""
    names = tuple(names)
    if mode is None:
        return names
    if mode == "int8":
        # per-tensor quantize/dequantize become elementwise ops (which layout conversion
        # follows), so int8 runs channels-last as fp32 does
        return names if _INT8[0] in names else _INT8 + names
    if mode == "fp16":
        at = names.index("dispatch-library")
        return names[:at] + ("to-fp16", "fold-constant") + names[at:]
    raise EdgeccError(f"unknown quantization mode {mode!r}")


def check_pass_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in PASSES and n != "all"]
    if unknown:
        raise EdgeccError(f"unknown pass name(s) {', '.join(unknown)}; known: "
                          f"{', '.join(PASSES)} (or 'all')")


def apply(mod, names: Sequence[str], *, target: Target,
          print_ir_after: Sequence[str] = (), emit: Callable[[str], None] = print):
    """Run the passes ``names`` in order under the target and opt_level=3. An optional pass that
    fails is left out (reported to :func:`fallback.report`); a required one raises
    :class:`CompileError`."""
    import tvm  # noqa: PLC0415

    check_pass_names(print_ir_after)
    tvm_target = target.to_tvm()
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        for name in names:
            try:
                mod = PASSES[name].run(mod, target=tvm_target)
            except EdgeccError:
                raise
            except Exception as e:  # noqa: BLE001  (TVM raises many types)
                if not PASSES[name].optional:
                    raise CompileError.from_tvm(f"pass '{name}'", e) from e
                fallback.report(f"{name}: left out ({CompileError.describe(e)})")
            if name in print_ir_after or "all" in print_ir_after:
                emit(f"# ---- IR after {name} ----\n{mod.script(show_meta=False)}")
    return mod


def describe_pipelines() -> str:
    lines = ["passes:"]
    width = max(len(n) for n in PASSES)
    lines += [f"  {p.name:<{width}}  {p.description}" for p in PASSES.values()]
    lines.append("pipelines:")
    lines += [f"  {name}: {' -> '.join(steps)}" for name, steps in PIPELINES.items()]
    lines.append("  --quantize int8 runs qdq-to-int8 -> decompose-qdq first (cpu-default always "
                 "does); --quantize fp16 inserts to-fp16 -> fold-constant before dispatch-library")
    return "\n".join(lines)
