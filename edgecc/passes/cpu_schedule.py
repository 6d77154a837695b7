"""Give kernels that have no tuned record a default CPU schedule instead of naive loops."""

from __future__ import annotations

NAME = "cpu-schedule"
OPTIONAL = True  # an optimization: a model compiles without it
DESCRIPTION = ("Default CPU schedules for kernels that have no tuned record: dlight's GEMV and "
               "reduction rules, and parallel + vectorized loops for elementwise/layout kernels "
               "(transposes); tuned kernels are left as they are.")

# What MetaSchedule's only candidate for an elementwise kernel carries (its design space has one
# schedule): outer loops fused and parallel up to this many iterations, the innermost vectorized.
MAX_PARALLEL_EXTENT = 64
MAX_VECTORIZE_EXTENT = 64


def run(mod, *, target):
    from tvm.s_tir import dlight as dl

    from .fallback import try_kernel, unscheduled_kernels

    # dlight updates the module it is given in place: work on a copy, keep the pass pure
    out = dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())(mod.clone())
    for gv, func in unscheduled_kernels(out):
        scheduled = try_kernel(NAME, gv, lambda f=func: schedule_elementwise(f, target)
                               if is_elementwise(f) else None, left="left unscheduled")
        if scheduled is not None:
            out[gv] = scheduled.with_attr("tirx.is_scheduled", True)
    return out


def is_elementwise(func) -> bool:
    """Every block of (unscheduled) ``func`` is data-parallel: transposes, reshapes,
    elementwise ops. No reduction, so a schedule only needs to parallelize and vectorize."""
    import tvm
    from tvm.s_tir import Schedule

    sch = Schedule(tvm.IRModule({"main": func}))
    blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    return bool(blocks) and all(int(iv.iter_type) == 0 for b in blocks for iv in b.iter_vars)


def schedule_elementwise(func, target):
    """``func`` with its intermediate blocks inlined and its loops parallel and vectorized (the
    schedule MetaSchedule tunes for such a kernel, minus the search), or None if a
    postprocessor rejects it."""
    import tvm
    from tvm.s_tir import Schedule

    from ..schedules.trace import postprocess

    sch = Schedule(tvm.IRModule({"main": func}))
    root = sch.get_sblock("root")
    for block in sch.get_child_blocks(root)[:-1]:
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001  (not inlinable: it keeps its own loops)
            pass
    sch.annotate(root, "meta_schedule.parallel", MAX_PARALLEL_EXTENT)
    sch.annotate(root, "meta_schedule.vectorize", MAX_VECTORIZE_EXTENT)
    return sch.mod["main"] if postprocess(sch, target) else None
