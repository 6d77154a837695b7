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

import math
import re
from collections.abc import Sequence

from .trace import (anchor_block, anchor_loop_positions, design_space, largest_divisor,
                    postprocess, rv_id, with_cores)

DEFAULT_CORES = 4  # parallel extent when the target names no core count (16 jobs per core)
# vector registers a register tile may take: its accumulators, its vectors of the second
# operand and one broadcast value. AVX2 has 16 (6 rows x 2 vectors = 12 accumulators fit;
# measured, no logs: 6 rows ran mobilenetv2 25% (avx512) and 18% (AVX2) faster than 4, resnet18
# 3% and 7%; 8 rows x 2 vectors spill). AVX-512 has 32: dense contractions take them all there
# (vector_registers); NEON's 32 are not measured on hardware, so it keeps this budget
VECTOR_REGISTERS = 16
# vectors of the innermost output loop in a tile: 1, 2 or 4 (ViT's matmuls with one row: 4
# vectors ran 10-35% faster than 2, 6 vectors 2.3-3.2x slower)
VECTOR_COUNTS = (1, 2, 4)
FMA_LATENCY = 4  # cycles (tile_efficiency's core model)
RULE_VERSION = 4  # bump when the rule changes: tune measures each task's new rule seed again
UNROLL_STEP = 64  # the unroll depth picked among MetaSchedule's candidates (0, 16, 64, 512)
INLINE_PRODUCER_MAX_REDUCTION = 64  # see producer_location
SEED = 0  # the design space samples its other decisions (compute locations) with this seed


def default_tiles(extents: Sequence[int], levels: Sequence[int], *, lanes: int,
                  shares_vector: Sequence[bool] | None = None,
                  registers: int = VECTOR_REGISTERS,
                  panel_major: bool = False) -> list[list[int]]:
    """Tile factors, outermost first, for the anchor loops of a multi-level tiling sketch:
    ``levels[i]`` is how many ways loop ``i`` (of ``extents[i]`` iterations) is split (4 for an
    output loop, 2 for a reduction loop in SSRSRS).

    The innermost factors of the output loops are the register tile (:func:`register_tile`):
    a vector of the innermost output loop by rows taken from one or two of the loops outside
    it (the second only where ``shares_vector[i]``: its iterations load the same vectors, as a
    conv's rows share its weights; a batched matmul's batch loop does not). Every other factor
    goes to the outermost level: outer output loops are fused into the parallel loop, and the
    reduction runs whole around the register tile. With ``panel_major`` the row loops' outer
    factors go to the second level instead (inside the vector loop's outer factor): the tiles
    that read one panel of the second operand (a conv's weights for a vector of output
    channels) run one after another, so the panel is read from cache again rather than from
    memory (:func:`panel_major`)."""

    spatial = [i for i, n in enumerate(levels) if n > 2]
    inner = {}
    if spatial:
        last = spatial[-1]
        rows = [i for i in reversed(spatial[:-1]) if extents[i] > 1][:2]
        if len(rows) == 2 and shares_vector is not None and not shares_vector[rows[1]]:
            rows = rows[:1]
        vector, row_factors = register_tile(extents[last], [extents[i] for i in rows],
                                            lanes=lanes, registers=registers)
        inner = {last: vector, **dict(zip(rows, row_factors, strict=True))}
    second = set()
    if panel_major and spatial:
        second = {i for i in spatial[:-1]
                  if shares_vector is None or shares_vector[i]}
    out = []
    for i, (extent, n) in enumerate(zip(extents, levels, strict=True)):
        f = inner.get(i, 1)
        if n <= 1:
            out.append([extent])
        elif i in second:
            out.append([1, extent // f] + [1] * (n - 3) + [f])
        else:
            out.append([extent // f] + [1] * (n - 2) + [f])
    return out


def register_tile(vector_extent: int, row_extents: Sequence[int], *, lanes: int,
                  registers: int = VECTOR_REGISTERS) -> tuple[int, list[int]]:
    """The register tile of a contraction: (innermost factor of the vector loop, innermost
    factor of each row loop in ``row_extents``, innermost first).

    Each step of the reduction loads the tile's vectors of the second operand, broadcasts one
    value per row and does rows x vectors multiply-adds into as many accumulator registers
    (accumulators + vectors + 1 at most :data:`VECTOR_REGISTERS`). A tile is scored by a
    model of one step (:func:`tile_efficiency`: two multiply-adds and two loads a cycle, a
    multiply-add's result ready four cycles later), then by having two vectors (the measured
    default), then by multiply-adds per load, then by using fewer row loops, the innermost
    first. The vector is 1, 2 or 4 vectors of the loop (:data:`VECTOR_COUNTS`; the largest
    power of two dividing it, up to two vectors, when it has no multiple of the vector width):
    four only where rows are too few for two (ViT's 197 tokens: a prime). Rows come from one loop (6 rows by 2 vectors
    when the extents allow: the best measured) or, when its extent splits badly (7, 14, 13: a
    prime factor above 6), from two (14x14: 2x2 rows by 2 vectors) or with one vector (7x7: 7
    rows; SqueezeNet's 13x13 classifier with 1000 channels: 13 rows)."""

    if vector_extent % lanes:
        vec = largest_divisor(vector_extent, 2 * lanes, pow2=True)
        vecs = [vec if vec > 1 else largest_divisor(vector_extent, 2 * lanes)]
    else:
        vecs = [lanes * k for k in VECTOR_COUNTS if vector_extent % (lanes * k) == 0]
    most = registers - 2  # accumulators beside one vector and one broadcast
    divisors = [[d for d in range(1, min(e, most) + 1) if e % d == 0] for e in row_extents]
    candidates = [([], 1)]
    for ds in divisors:
        candidates = [(fs + [d], r * d) for fs, r in candidates for d in ds]
    best, best_key = (vecs[0], [1] * len(row_extents)), None
    for vec in vecs:
        nvec = -(-vec // lanes)  # registers: a partial vector takes one too
        for factors, rows in candidates:
            if rows * nvec + nvec + 1 > registers:
                continue
            key = (tile_efficiency(rows, nvec), nvec == 2, rows * nvec / (rows + nvec),
                   -sum(f > 1 for f in factors), factors)
            if best_key is None or key > best_key:
                best, best_key = (vec, factors), key
    return best


def tile_efficiency(rows: int, vectors: int) -> float:
    """The share of peak multiply-add throughput a register tile of ``rows`` x ``vectors``
    accumulators reaches in one reduction step, on a core that issues two vector multiply-adds
    and two loads a cycle with a multiply-add latency of four cycles: the step takes at least
    half a cycle per multiply-add, per load (``vectors`` + one broadcast per row), and four
    cycles (each accumulator waits for its previous multiply-add)."""
    fmas = rows * vectors
    return fmas / max(fmas, rows + vectors, 2 * FMA_LATENCY)


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


def shares_vector_operand(block) -> list[bool]:
    """Per iterator of the anchor block: its iterations read the same elements of every operand
    indexed by the innermost output iterator (the vectors of a register tile: a conv's
    weights), so a register tile can take rows from it. None of those operands' indices use it
    (a conv's output rows: yes; a batched matmul's batch: no)."""
    iters = list(block.iter_vars)
    spatial = [iv for iv in iters if int(iv.iter_type) == 0]
    if not spatial:
        return [False] * len(iters)
    vector = spatial[-1].var
    vector_reads = [u for u in map(_region_vars, block.reads) if vector.name in u]
    return [not any(iv.var.name in u for u in vector_reads) for iv in iters]


def _region_vars(read) -> set[str]:
    """Names of the variables a block read's region is indexed by."""
    from tvm.tirx.analysis import undefined_vars  # noqa: PLC0415

    return {v.name for r in read.region for v in undefined_vars(r.min)}


def operand_bytes(block) -> tuple[int, int]:
    """(bytes of the operands the innermost output iterator indexes: a conv's or matmul's
    weights, bytes of the other operands: its input), over the anchor block's read buffers
    (the accumulator excluded)."""
    import tvm  # noqa: PLC0415

    spatial = [iv for iv in block.iter_vars if int(iv.iter_type) == 0]
    written = {w.source.name for w in block.writes}
    vector = spatial[-1].var.name if spatial else None
    sizes = [0, 0]
    for read in block.reads:
        if read.source.name in written:
            continue
        buf = read.source
        size = math.prod(int(d) for d in buf.shape) * tvm.DataType(str(buf.dtype)).bits // 8
        sizes[0 if vector in _region_vars(read) else 1] += size
    return sizes[0], sizes[1]


def panel_major(block) -> bool:
    """Run a contraction's tiles panel by panel (:func:`default_tiles`): when its weights
    outweigh its input (the late layers of a CNN: ResNet-50's 3x3 convs on 7x7 and 14x14
    inputs have 2.4-9.4 MB of weights, 25-200 KB of input). Row-major order (the default)
    sweeps every weight panel for each row tile, so those weights come from memory once per row
    tile; panel-major order sweeps the small input once per panel instead."""
    weights, inputs = operand_bytes(block)
    return weights > inputs


def vector_registers(target) -> int:
    """The vector registers a register tile may use on ``target``: all 32 with AVX-512 (on an
    Intel Xeon with two 512-bit multiply-add ports, ResNet-50 at 224 ran 17% faster than with
    16: more rows per weight vector loaded), else :data:`VECTOR_REGISTERS`."""
    return 32 if vector_bits(target) == 512 else VECTOR_REGISTERS


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
    location = producer_location(extents, kinds)
    shares = shares_vector_operand(block)
    # 32 registers only for dense reductions (padding computed once before them); a
    # window-only one (depthwise) keeps the 16-register tiles: 32 is not measured there
    registers = vector_registers(target) if location == -1 else VECTOR_REGISTERS
    by_panel = panel_major(block)
    for sketch in sketches:
        tiles = _anchor_tile_insts(sketch.trace.insts, block.name_hint)
        if len(tiles) != len(extents):
            continue
        levels = [len(sketch.trace.decisions[inst]) for inst in tiles]
        factors = default_tiles(extents, levels, lanes=lanes, shares_vector=shares,
                                registers=registers, panel_major=by_panel)
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
    """MetaSchedule's CPU design space for ``mod`` (:func:`.trace.design_space`, decisions
    sampled with :data:`SEED`)."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    return design_space(mod, with_cores(target, DEFAULT_CORES),
                        ms.schedule_rule.ScheduleRule.create("llvm"), seed=SEED)
