"""Helpers shared by the schedules that replay a MetaSchedule trace (the tiling rule and
transfer tuning): divisors, the anchor block, a trace's loop variables, MetaSchedule's tune
context and postprocessors, and a module's workload key."""

from __future__ import annotations


def largest_divisor(rest: int, limit: int, *, pow2: bool = False) -> int:
    """The largest divisor of ``rest`` not above ``limit`` (a power of two if ``pow2``)."""
    if pow2:
        d = 1
        while d * 2 <= limit and rest % (d * 2) == 0:
            d *= 2
        return d
    return max(d for d in range(1, min(limit, rest) + 1) if rest % d == 0)


def anchor_block(func):
    import tvm  # noqa: PLC0415
    from tvm.s_tir import analysis  # noqa: PLC0415

    return analysis.find_anchor_sblock(tvm.IRModule({"main": func}))


def anchor_loop_positions(insts, anchor: str) -> dict[int, int]:
    """Loop random variable -> its position among the anchor block's iterators, from the
    trace's first ``get_loops`` on the block named ``anchor``."""
    blocks = {rv_id(i.outputs[0]) for i in insts
              if i.kind.name == "GetSBlock" and str(i.attrs[0]) == anchor}
    for inst in insts:
        if inst.kind.name == "GetLoops" and rv_id(inst.inputs[0]) in blocks:
            return {rv_id(rv): k for k, rv in enumerate(inst.outputs)}
    return {}


def rv_id(obj) -> int:
    """Identity of a trace's random variable: its object handle."""
    return int(obj.__chandle__())


def tune_context(mod, target, *, space=None, seed: int = -1):
    """A MetaSchedule TuneContext for ``mod`` and ``target`` (and a space generator). Built with
    the FFI constructor: TuneContext() imports tvm.s_tir.tensor_intrin (~30 s here), which
    postprocessors and the CPU design space do not need."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415
    from tvm.s_tir.meta_schedule import _ffi_api  # noqa: PLC0415
    from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func  # noqa: PLC0415

    ctx = ms.TuneContext.__new__(ms.TuneContext)
    ctx.__init_handle_by_constructor__(_ffi_api.TuneContext, mod, target, space, None, "main",
                                       1, seed, get_logging_func(get_logger(__name__)))
    return ctx


def design_space(mod, target, rules, *, seed: int) -> list:
    """MetaSchedule's sketches of ``mod`` under schedule ``rules`` (decisions sampled with
    ``seed``), those whose accumulator is a tile (the epilogue computed inside it, or a cache
    write) first: tuned CPU records nearly all are, and the tile then lives in registers."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    space = ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=[], mutator_probs={})
    space._initialize_with_tune_context(tune_context(mod, target, space=space, seed=seed))
    sketches = list(space.generate_design_space(mod))
    sketches.sort(key=lambda s: not any(i.kind.name in ("ReverseComputeAt", "CacheWrite")
                                        for i in s.trace.insts))
    return sketches


def with_cores(target, cores: int):
    """``target`` with a ``num-cores`` (MetaSchedule's parallel rules need one), ``cores`` if
    it names none."""
    import tvm  # noqa: PLC0415

    if "num-cores" in target.attrs:
        return target
    return tvm.target.Target({**dict(target.export()), "num-cores": cores})


def postprocess(sch, target) -> bool:
    """MetaSchedule's LLVM postprocessors (parallel/vectorize/unroll rewriting, reduction
    decomposition, weight layout rewrite) on ``sch``; False if one rejects it."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    ctx = tune_context(sch.mod, target)
    sch.enter_postproc()  # as the search does: a tuning record's trace marks where they begin
    for post in ms.postproc.Postproc.create("llvm"):
        post._initialize_with_tune_context(ctx)
        if not post.apply(sch):
            return False
    return True


def workload_key(mod) -> str:
    """The key MetaSchedule's databases give the workload ``mod`` (its structural hash)."""
    from tvm.s_tir.meta_schedule.utils import shash2hex  # noqa: PLC0415

    return shash2hex(mod)


def kernel_flops(kernel) -> int:
    """Operations of one kernel (a PrimFunc or an IRModule holding one), as MetaSchedule
    counts them; 0 if it cannot (the figure is informational: reports, task order)."""
    try:
        import tvm  # noqa: PLC0415
        from tvm.s_tir.analysis import estimate_tir_flops  # noqa: PLC0415

        mod = kernel if isinstance(kernel, tvm.IRModule) else tvm.IRModule({"main": kernel})
        return int(estimate_tir_flops(mod))
    except Exception:  # noqa: BLE001  (informational only)
        return 0
