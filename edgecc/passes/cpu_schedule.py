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
# a channel (or row) loop that is no multiple of the vector width is vectorized whole up to this
# extent (ViT's 197-token softmax rows): LLVM splits it into whole vectors and a tail
MAX_WHOLE_VECTOR = 256


def run(mod, *, target):
    from tvm.s_tir import dlight as dl

    from .fallback import try_kernel, unscheduled_kernels

    # dlight updates the module it is given in place: work on a copy, keep the pass pure.
    # Kernels whose reduction feeds a broadcasting epilogue are kept from it (dlight skips
    # scheduled kernels): see gates_a_larger_tensor
    work = mod.clone()
    held = {}
    for gv, func in unscheduled_kernels(work):
        if _is_gate(func):
            held[gv] = func
            work[gv] = func.with_attr("tirx.is_scheduled", True)
    out = dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())(work)
    for gv, func in held.items():
        out[gv] = func
    for gv, func in unscheduled_kernels(out):
        scheduled = try_kernel(NAME, gv, lambda f=func: schedule_elementwise(f, target)
                               if is_elementwise(f) else None, left="left unscheduled")
        if scheduled is not None:
            out[gv] = scheduled.with_attr("tirx.is_scheduled", True)
    return out


def _root_blocks(func) -> list:
    """The blocks directly under ``func``'s root block (unscheduled: one per op)."""
    import tvm
    from tvm.s_tir import Schedule

    sch = Schedule(tvm.IRModule({"main": func}))
    return [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]


def _is_gate(func) -> bool:
    """:func:`gates_a_larger_tensor`, False where it cannot tell (the kernel then gets
    dlight's schedule as before)."""
    try:
        return gates_a_larger_tensor(func)
    except Exception:  # noqa: BLE001  (an odd kernel must not cost every kernel its schedule)
        return False


def gates_a_larger_tensor(func) -> bool:
    """A product with weights whose result is broadcast over a larger tensor in one kernel: a
    squeeze-excite gate (a 1x1 conv on pooled channels, a sigmoid, times the feature map).
    dlight's GEMV rule inlines the sigmoid into the broadcast, computing it once per element
    of the feature map instead of once per channel, and on EfficientNet-B0's 7x7x1152 gate LLVM
    took 15 minutes to compile the result (the same kernel on 14x14x672 took 0.2 s). Left
    unscheduled, the gate is computed once per channel in its own loop."""
    import math

    blocks = _root_blocks(func)

    def size(block) -> int:
        return math.prod(int(d) for d in block.writes[0].source.shape) if block.writes else 0

    free = func.attrs.get("layout_free_buffers", []) if func.attrs is not None else []
    weights = {func.params[int(i)].name for i in free}  # (a param is its buffer)
    # a product with weights (a matrix-vector product), not a softmax's or a norm's reduction
    reductions = [b for b in blocks if any(int(iv.iter_type) == 2 for iv in b.iter_vars)
                  and any(r.source.name in weights for r in b.reads)]
    return bool(reductions) and size(blocks[-1]) > max(size(b) for b in reductions)


def is_elementwise(func) -> bool:
    """Every block of (unscheduled) ``func`` is data-parallel: transposes, reshapes,
    elementwise ops. No reduction, so a schedule only needs to parallelize and vectorize."""
    blocks = _root_blocks(func)
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
    if not _vectorize_channels(sch, sch.get_child_blocks(root)[-1], target):
        sch.annotate(root, "meta_schedule.parallel", MAX_PARALLEL_EXTENT)
        sch.annotate(root, "meta_schedule.vectorize", MAX_VECTORIZE_EXTENT)
    return sch.mod["main"] if postprocess(sch, target) else None


def _vectorize_channels(sch, block, target) -> bool:
    """Parallel outer loops and the innermost (channels-last: channel) loop in whole vectors,
    where that loop's extent is a multiple of the vector width and every operand is read
    contiguously along it or not at all (per-channel scales, a per-pixel value). MetaSchedule's
    schedule fuses all loops into one and vectorizes 64 elements of it: 64 elements of a
    224-channel tensor straddle pixels, so a per-channel scale is gathered element by element
    (DenseNet's BN-ReLU ran at about 6 GB/s). False (nothing changed) where it does not apply."""
    import numpy as np

    from ..schedules.rule_tiling import vector_bits

    b = sch.get(block)
    if not b.iter_vars or len(b.writes) != 1:
        return False
    last = b.iter_vars[-1]
    extent = getattr(last.dom.extent, "value", None)
    dtype = str(getattr(b.writes[0].source, "dtype", ""))
    bits = np.dtype(dtype).itemsize * 8 if dtype in ("float32", "float16", "int32",
                                                     "int8", "uint8") else 0
    lanes = vector_bits(target) // bits if bits else 0
    if not lanes or extent is None or extent < lanes or (extent % lanes and
                                                         extent > MAX_WHOLE_VECTOR):
        return False
    for region in [*b.reads, *b.writes]:
        if not region.region:
            continue  # a scalar
        inner = region.region[-1]
        if inner.min.same_as(last.var) and getattr(inner.extent, "value", 0) == 1:
            continue
        if _mentions(inner.min, last.var) or any(_mentions(r.min, last.var)
                                                 for r in region.region[:-1]):
            return False  # read across the vector (a transpose): left to MetaSchedule's
    loops = sch.get_loops(block)
    if len(loops) != len(b.iter_vars):
        return False
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    if extent % lanes:  # one vector of the whole row: LLVM splits it into whole vectors + a tail
        sch.vectorize(loops[-1])
    else:
        sch.vectorize(sch.split(loops[-1], [None, lanes])[1])
    return True


def _mentions(expr, var) -> bool:
    from tvm import tirx

    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))
