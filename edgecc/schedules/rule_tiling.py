"""A tiled, parallel, vectorized schedule for a convolution or matrix product that has no
tuning record, made by a rule without measuring anything.

MetaSchedule's design space for a kernel (its CPU rules: multi-level tiling "SSRSRS" of the
anchor block, the epilogue computed per tile, parallel/vectorize/unroll annotations on the root)
is a few traces whose decisions are left to the search. Here the sketch whose accumulator is a
tile is taken and every decision is set by a rule: the anchor's tiles (:func:`default_tiles`: a
register tile of up to two vectors of the innermost output loop by up to six iterations of the
next one, the whole reduction around it, the outer output loops fused and parallel), where the
input padding is computed (:func:`producer_location`) and the unroll depth. MetaSchedule's
postprocessors then lower the annotations, as for a tuned record.

The ``rule-schedule`` pass applies it to every conv and matmul left without a record, before
transfer tuning (it measured faster than transferred schedules, and on par with or faster than
tuned logs on the example CNNs); ``edgecc tune`` measures it as a seed of each task's search.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .trace import (anchor_block, anchor_loop_positions, largest_divisor, postprocess, rv_id,
                    tune_context)

DEFAULT_CORES = 4  # parallel extent when the target names no core count (16 jobs per core)
# iterations of the second-innermost output loop in the register tile: 6 rows x 2 vectors = 12
# accumulator registers (measured, no logs: 6 rows ran mobilenetv2 25% (avx512) and 18% (AVX2)
# faster than 4, resnet18 3% and 7%; 8 rows spill AVX2's 16 registers)
ROW_TILE = 6
RULE_VERSION = 2  # bump when the rule changes: tune measures each task's new rule seed again
UNROLL_STEP = 64  # the unroll depth picked among MetaSchedule's candidates (0, 16, 64, 512)
INLINE_PRODUCER_MAX_REDUCTION = 64  # see producer_location
SEED = 0  # the design space samples its other decisions (compute locations) with this seed


def default_tiles(extents: Sequence[int], levels: Sequence[int], *,
                  lanes: int) -> list[list[int]]:
    """Tile factors, outermost first, for the anchor loops of a multi-level tiling sketch:
    ``levels[i]`` is how many ways loop ``i`` (of ``extents[i]`` iterations) is split (4 for an
    output loop, 2 for a reduction loop in SSRSRS).

    The innermost output loop gets the largest power of two dividing it, up to two vectors
    (``2 * lanes``; any divisor when no power of two above 1 divides), as its innermost factor:
    what is vectorized. The next output loop with more than one iteration gets up to
    :data:`ROW_TILE` innermost (register rows; odd divisors are fine here). Every other factor
    goes to the outermost level: outer output loops are fused into the parallel loop, and the
    reduction runs whole around the register tile."""

    spatial = [i for i, n in enumerate(levels) if n > 2]
    last = spatial[-1] if spatial else None
    rows = next((i for i in reversed(spatial[:-1]) if extents[i] > 1), None)
    out = []
    for i, (extent, n) in enumerate(zip(extents, levels, strict=True)):
        inner = 1
        if i == last:
            inner = largest_divisor(extent, 2 * lanes, pow2=True)
            if inner == 1:
                inner = largest_divisor(extent, 2 * lanes)
        elif i == rows:
            inner = largest_divisor(extent, ROW_TILE)
        out.append([extent // inner] + [1] * (n - 2) + [inner] if n > 1 else [extent])
    return out


# the anchor accumulates a product of two buffer loads (conv, matmul): "+ A[...] * B[",
# either side maybe cast (int8 x int8 -> int32)
_PRODUCT = re.compile(r"\+ (T\.Cast\(\"\w+\", )?\w+\[[^\]]*\]\)? \* (T\.Cast\(\"\w+\", )?\w+\[")


def is_contraction(func) -> bool:
    """The kernel is built around a convolution or matrix product (its anchor block
    accumulates a product of two tensors) with at least two output loops of more than one
    iteration: not a matrix-vector product (dlight's GEMV rule) nor a plain reduction."""

    block = anchor_block(func)
    if block is None or not _PRODUCT.search(str(block.body)):
        return False
    spatial = [iv for iv in block.iter_vars if int(iv.iter_type) == 0]
    return sum(1 for iv in spatial if int(iv.dom.extent) > 1) >= 2


def producer_location(extents: Sequence[int], kinds: Sequence[int]) -> int:
    """Where the anchor's producer (the zero padding of a conv's input) is computed, as a
    MetaSchedule compute-location decision: -2 (inlined into the conv) when the reduction is a
    small window and nothing else (a depthwise conv: a bounds check per multiply-add is cheaper
    than a pass over the padded input), else -1 (once, before the conv: a dense conv reads each
    input element once per output channel tile, so a check on every read would dominate).
    Measured (mobilenetv2, resnet18, AVX-512): inlined padding runs mobilenetv2 15% faster,
    and resnet18 3.4x slower."""
    reduction = 1
    for extent, kind in zip(extents, kinds, strict=True):
        if kind == 2:
            reduction *= int(extent)
    return -2 if reduction <= INLINE_PRODUCER_MAX_REDUCTION else -1


def vector_bits(target) -> int:
    """The SIMD register width the target's code uses: 512 with AVX-512, 256 on other x86-64
    (AVX2, x86-64-v3), 128 elsewhere (NEON)."""
    attrs = {k: str(v) for k, v in target.attrs.items()}
    cpu, mattr = attrs.get("mcpu", ""), attrs.get("mattr", "")
    if "avx512" in cpu or "+avx512f" in mattr:
        return 512
    if "x86" in attrs.get("mtriple", "") or cpu.startswith(("x86-64", "skylake", "haswell")):
        return 256
    return 128


def default_schedule(func, target):
    """``func`` scheduled by the rule above, or None when it has no anchor block (no reduction)
    or no sketch takes the rule's decisions."""
    sch = rule_schedule(func, target)
    return None if sch is None else sch.mod["main"]


def rule_schedule(func, target):
    """The Schedule (its trace included: a tuning seed) of :func:`default_schedule`."""
    import tvm  # noqa: PLC0415


    block = anchor_block(func)
    if block is None:
        return None
    extents = [int(iv.dom.extent) for iv in block.iter_vars]
    kinds = [int(iv.iter_type) for iv in block.iter_vars]
    bits = tvm.DataType(str(block.writes[0].source.dtype)).bits if block.writes else 32
    lanes = max(vector_bits(target) // max(bits, 8), 1)
    mod = tvm.IRModule({"main": func})
    sketches = _design_space(mod, target)
    # sketches whose accumulator is a tile (the epilogue computed inside the tile, or a cache
    # write) first: tuned CPU records nearly all are, and the tile then lives in registers
    sketches.sort(key=lambda s: not any(i.kind.name in ("ReverseComputeAt", "CacheWrite")
                                        for i in s.trace.insts))
    location = producer_location(extents, kinds)
    for sketch in sketches:
        tiles = _anchor_tile_insts(sketch.trace.insts, block.name_hint)
        if len(tiles) != len(extents):
            continue
        levels = [len(sketch.trace.decisions[inst]) for inst in tiles]
        factors = default_tiles(extents, levels, lanes=lanes)
        for where in dict.fromkeys((location, -1)):  # inlining may be refused: then at root
            sch = _replay(mod, sketch.trace, dict(zip(tiles, factors, strict=True)), where,
                          target)
            if sch is not None:
                return sch
    return None


def _replay(mod, trace, tiles: dict, location: int, target):
    """``trace`` on a fresh schedule of ``mod`` with the rule's decisions (``tiles`` per
    SamplePerfectTile instruction of the anchor, ``location`` for compute locations, unroll
    :data:`UNROLL_STEP`) and MetaSchedule's postprocessors; None if it does not apply."""
    from tvm.s_tir import Schedule  # noqa: PLC0415


    for inst in trace.insts:
        decision = None
        if inst in tiles:
            decision = tiles[inst]
        elif inst.kind.name == "SampleComputeLocation":
            decision = location
        elif inst.kind.name == "SampleCategorical":
            candidates = [int(c) for c in inst.attrs[0]]
            if UNROLL_STEP in candidates:
                decision = candidates.index(UNROLL_STEP)
        if decision is not None:
            trace = trace.with_decision(inst, decision, remove_postproc=True)
    sch = Schedule(mod)
    try:
        trace.apply_to_schedule(sch, remove_postproc=True)
        return sch if postprocess(sch, target) else None
    except Exception:  # noqa: BLE001  (TVM raises several kinds; a misfit is not an error)
        return None


def _anchor_tile_insts(insts, anchor: str) -> list:
    """The SamplePerfectTile instructions on the anchor block's own loops, in loop order."""

    position = anchor_loop_positions(insts, anchor)
    found = [(position[rv_id(i.inputs[0])], i) for i in insts
             if i.kind.name == "SamplePerfectTile" and rv_id(i.inputs[0]) in position]
    return [i for _, i in sorted(found, key=lambda t: t[0])]


def _design_space(mod, target) -> list:
    """MetaSchedule's CPU design space for ``mod`` (its sketches, decisions sampled with
    :data:`SEED`)."""
    import tvm  # noqa: PLC0415
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415


    if "num-cores" not in target.attrs:
        target = tvm.target.Target({**dict(target.export()), "num-cores": DEFAULT_CORES})
    space = ms.space_generator.PostOrderApply(
        sch_rules=ms.schedule_rule.ScheduleRule.create("llvm"), postprocs=[], mutator_probs={})
    space._initialize_with_tune_context(tune_context(mod, target, space=space, seed=SEED))
    return list(space.generate_design_space(mod))
