"""An int8 convolution or matrix product tensorized with the target's dot-product instruction,
by a rule, without measuring anything.

The kernel's anchor block (8-bit activations x int8 weights -> int32, channels innermost: NHWC
activations, OHWI weights, or a matmul) is split so that ``lanes`` output channels x 4 reduction
elements map onto one instruction (:mod:`.intrinsics`: 16 for x86 VNNI, 4 for ARM sdot), using
MetaSchedule's ``MultiLevelTilingWithIntrin`` design space. Its decisions are set as for fp32
(:func:`.rule_tiling.default_tiles`: a register tile of up to 4 instructions' outputs by rows,
the reduction around it, outer loops parallel), one vector register per instruction's sums, and
all 32 vector registers of AVX-512 / NEON for the tile (not the fp32 rule's 16: ResNet-50 int8
ran 15.0 ms against 18.5 ms with 16, MobileNetV2 2.90 against 2.80 ms, VNNI, no logs).
Then:

- the weights are packed so each instruction reads its operand contiguously (output channel /
  lanes, ..., reduction / 4, lanes, 4): a layout-rewrite block that ``prepack-weights`` folds
  into the constants at compile time, as for a tuned kernel;
- the register tile's loops are unrolled and the epilogue (requantize, bias, activation) is
  vectorized; MetaSchedule's own vectorization would vectorize the loop around the
  instruction, which LLVM cannot lower.
"""

from __future__ import annotations

import math

from .intrinsics import DotProduct
from .rule_tiling import DEFAULT_CORES, default_tiles, shares_vector_operand
from .trace import anchor_block, design_space, tune_context, with_cores

SEED = 0
# no automatic unrolling (the register tile is unrolled explicitly): TVM's explicit unroll of
# the tile's loop nest turned a vectorized SiLU epilogue (requantize + fast_exp) into scalar
# code, 32 copies of it (EfficientNet-B0's int8 expand convs)
UNROLL_STEP = 0


def is_int8_contraction(block, activations: str) -> bool:
    """The anchor multiplies ``activations`` (uint8, int8) by int8 weights into int32."""
    if block is None or len(block.reads) < 2 or not block.writes:
        return False
    dtypes = sorted(str(r.source.dtype) for r in block.reads if str(r.source.dtype) != "int32")
    return (dtypes == sorted([activations, "int8"])
            and str(block.writes[0].source.dtype) == "int32")


def weight_operand(block) -> tuple[str, int, int] | None:
    """(buffer name, the dimension indexed by the output channel, the one indexed by the
    reduction) of the operand the innermost output iterator indexes (a conv's or matmul's
    weights), from the unscheduled anchor block."""
    from tvm.tirx.analysis import undefined_vars  # noqa: PLC0415

    spatial = [iv.var.name for iv in block.iter_vars if int(iv.iter_type) == 0]
    reduce = [iv.var.name for iv in block.iter_vars if int(iv.iter_type) == 2]
    if not spatial or not reduce:
        return None
    written = {w.source.name for w in block.writes}
    for read in block.reads:
        if read.source.name in written:
            continue
        uses = [{v.name for v in undefined_vars(r.min)} for r in read.region]
        out = [d for d, u in enumerate(uses) if spatial[-1] in u]
        red = [d for d, u in enumerate(uses) if reduce[-1] in u]
        if len(out) == 1 and len(red) == 1 and out != red:
            return read.source.name, out[0], red[0]
    return None


def tensorized_schedule(func, target, dot: DotProduct):
    """The Schedule of ``func`` tensorized with the dot product ``dot``, or None when the
    design space has no tensorized sketch for it (channel counts that are not multiples of the
    instruction's, another dtype) or a step does not apply."""
    import tvm  # noqa: PLC0415

    block = anchor_block(func)
    if not is_int8_contraction(block, dot.activations):
        return None
    weight = weight_operand(block)
    if weight is None:
        return None
    mod = tvm.IRModule({"main": func})
    target = with_cores(target, DEFAULT_CORES)
    shares = shares_vector_operand(block)
    for sketch in _design_space(mod, target, dot.name):
        sch = _replay(mod, sketch, shares, target, weight, dot)
        if sch is not None:
            return sch
    return None


def _design_space(mod, target, intrin: str) -> list:
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    rules = [
        ms.schedule_rule.AutoInline(into_producer=False, into_consumer=True,
                                    inline_const_tensor=True, disallow_if_then_else=True,
                                    require_injective=True, require_ordered=True,
                                    disallow_op=["tirx.exp"]),
        ms.schedule_rule.MultiLevelTilingWithIntrin(
            intrin, structure="SSRSRS", tile_binds=None, max_innermost_factor=64,
            vector_load_lens=None, reuse_read=None,
            reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global")),
        ms.schedule_rule.ParallelizeVectorizeUnroll(max_jobs_per_core=16,
                                                    max_vectorize_extent=64,
                                                    unroll_max_steps=[0, 16, 64, 512],
                                                    unroll_explicit=True),
        ms.schedule_rule.RandomComputeLocation(),
    ]
    return [s for s in design_space(mod, target, rules, seed=SEED)
            if "auto_tensorize" in str(s.trace)]


def _replay(mod, sketch, shares, target, weight, dot: DotProduct):
    from tvm.s_tir import Schedule  # noqa: PLC0415

    trace = sketch.trace
    tiles = [i for i in trace.insts if i.kind.name == "SamplePerfectTile"]
    extents, levels = [], []
    for inst in tiles:
        factors = [int(f) for f in trace.decisions[inst]]
        extents.append(math.prod(factors))
        levels.append(len(factors))
    if len(tiles) != len(shares):
        return None
    chosen = default_tiles(extents, levels, lanes=1, shares_vector=shares,
                           registers=dot.registers)
    for inst, factors in zip(tiles, chosen, strict=True):
        trace = trace.with_decision(inst, factors, remove_postproc=True)
    for inst in trace.insts:
        if inst.kind.name == "SampleComputeLocation":
            trace = trace.with_decision(inst, -1, remove_postproc=True)
        elif inst.kind.name == "SampleCategorical":
            candidates = [int(c) for c in inst.attrs[0]]
            if UNROLL_STEP in candidates:
                trace = trace.with_decision(inst, candidates.index(UNROLL_STEP),
                                            remove_postproc=True)
    sch = Schedule(mod)
    try:
        trace.apply_to_schedule(sch, remove_postproc=True)
        return sch if _finish(sch, target, weight, dot, n_spatial=levels.count(4)) else None
    except Exception:  # noqa: BLE001  (TVM raises several kinds; a misfit is not an error)
        return None


def _finish(sch, target, weight, dot: DotProduct, *, n_spatial: int) -> bool:
    """Pack the weights, unroll the register tile, run the postprocessors, tensorize and
    vectorize the epilogue; False if a postprocessor rejects the schedule."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415
    from tvm.tirx import IndexMap  # noqa: PLC0415

    tensorized = _tensorized_block(sch)
    # 1. weights packed so one instruction's lanes x 4 operand is contiguous
    name, out_dim, red_dim = weight
    lanes, reduction = dot.lanes, dot.reduction
    reads = sch.get(tensorized).reads
    index = next(i for i, r in enumerate(reads) if r.source.name == name)
    region = [int(r.extent) for r in reads[index].region]
    if region[out_dim] != lanes or region[red_dim] != reduction:
        return False

    def pack(*idx):
        outer = [i // lanes if d == out_dim else i // reduction if d == red_dim else i
                 for d, i in enumerate(idx)]
        return [*outer, idx[out_dim] % lanes, idx[red_dim] % reduction]

    packed = sch.cache_read(tensorized, index, "global")
    sch.transform_layout(packed, ("write", 0), IndexMap.from_func(pack, ndim=len(region)))
    sch.annotate(packed, "meta_schedule.layout_rewrite_preproc", 1)
    # 2. the register tile (innermost spatial level of each output loop) unrolled, and no
    # vectorize annotation: it would vectorize the loop around the instruction
    for loop in sch.get_loops(tensorized)[-n_spatial:]:
        sch.unroll(loop)
    root = sch.get_sblock("root")
    sch.unannotate(root, "meta_schedule.vectorize")
    ctx = tune_context(sch.mod, target)
    sch.enter_postproc()
    for post in (ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteParallelVectorizeUnroll(),
                 ms.postproc.RewriteReductionBlock(),
                 ms.postproc.RewriteTensorize(vectorize_init_loop=True)):
        post._initialize_with_tune_context(ctx)
        if not post.apply(sch):
            return False
    if dot.llvm not in str(sch.mod):
        return False  # the tensorize postprocessor skips a block it cannot match
    # 3. the epilogue (the cache write and what is computed with it per tile) vectorized
    for block in sch.get_child_blocks(root):
        if _is_epilogue(sch, block):
            try:
                sch.vectorize(sch.get_loops(block)[-1])
            except Exception:  # noqa: BLE001  (a loop that cannot be vectorized stays scalar)
                pass
    return True


def _tensorized_block(sch):
    for block in _all_blocks(sch):
        ann = sch.get(block).annotations
        if "meta_schedule.auto_tensorize" in ann:
            return block
    raise ValueError("no block marked for tensorization")


def _all_blocks(sch):
    out, todo = [], [sch.get_sblock("root")]
    while todo:
        b = todo.pop()
        kids = sch.get_child_blocks(b)
        out += kids
        todo += kids
    return out


def _is_epilogue(sch, block) -> bool:
    """A data-parallel block inside the tiled loop nest whose innermost loop is serial."""
    from tvm import tirx  # noqa: PLC0415

    stmt = sch.get(block)
    if any(int(iv.iter_type) != 0 for iv in stmt.iter_vars) or "_init" in stmt.name_hint:
        return False
    loops = sch.get_loops(block)
    if len(loops) < 2:
        return False
    inner = sch.get(loops[-1])
    return inner.kind == tirx.ForKind.SERIAL and int(inner.extent) <= 64 and any(
        sch.get(lp).kind == tirx.ForKind.PARALLEL for lp in loops[:-1])
