"""Transfer tuning: give a kernel that has no tuning record of its own the schedule tuned for a
similar kernel (same operator, other shapes or another fused epilogue), instead of naive loops.

A MetaSchedule record is a *trace*: the schedule's instructions plus the random decisions the
search made (tile sizes, unroll depth, compute locations). Kernels with the same anchor block
(the conv2d/matmul the kernel is built around, compared with every number masked) accept the
same instructions; only the tile sizes must be refitted to the new loop extents
(:func:`refit_tile`). Donors are ranked by how far their loop extents are from the kernel's
(:func:`shape_distance`) and tried in order; the first whose trace applies and passes
MetaSchedule's postprocessors wins. Schedule primitives preserve semantics, so a transferred
kernel computes exactly what the naive one does; only its speed depends on the donor.

Donors come from the tuning logs in effect for the compile (the target's own shipped logs first);
the logs of other CPU targets are also donors, with a penalty (their tile sizes were measured on
other hardware). Nothing is measured at compile time.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .trace import (anchor_block, anchor_loop_positions, largest_divisor, postprocess, rv_id,
                    workload_key)

CROSS_TARGET_PENALTY = 2.0  # in shape_distance units (log2 of extent ratios)
DEGENERATE_PENALTY = 2.0  # per loop that has one iteration in one nest and more in the other
MAX_ATTEMPTS = 8  # donors tried per kernel before it keeps its default schedule


def _fit_factor(old: int, rest: int, *, innermost: bool) -> int:
    """The factor to use where the donor used ``old`` and ``rest`` iterations are left: ``old``
    if it divides ``rest``. Else, innermost (what gets vectorized): the largest power-of-two
    divisor not above ``old``. Odd vector lengths are a trap: LLVM legalizes a 28- or 55-lane
    vector into scalar code (measured: a depthwise conv 18x slower than with 4 lanes). Only when
    no power of two above 1 divides does it fall back to the largest divisor (7 for a 7-wide row).
    Outer levels take the largest divisor, or the power of two when that is at least half of it."""
    if rest % old == 0:
        return old
    largest = largest_divisor(rest, old)
    pow2 = largest_divisor(rest, old, pow2=True)
    if innermost:
        return pow2 if pow2 > 1 else largest
    return pow2 if 2 * pow2 >= largest else largest


def refit_tile(extent: int, old: Sequence[int]) -> list[int]:
    """Tile factors for a loop of ``extent`` shaped like ``old`` (outermost first): from the
    innermost level out, each level keeps the old factor where it divides what is left, else a
    divisor no larger (:func:`_fit_factor`: powers of two for the innermost, vectorized level);
    the outermost level takes the rest. The product is
    always ``extent`` and no inner level grows (the innermost stays within the tuner's
    vector/unroll limit)."""
    if extent < 1 or not old or any(int(f) < 1 for f in old):
        raise ValueError(f"cannot refit tile {list(old)} to extent {extent}")
    new = [1] * len(old)
    rest = int(extent)
    for i in range(len(old) - 1, 0, -1):
        new[i] = _fit_factor(int(old[i]), rest, innermost=i == len(old) - 1)
        rest //= new[i]
    new[0] = rest
    return new


def shape_distance(a: Sequence[int], b: Sequence[int]) -> float:
    """How far two loop nests' extents are apart: the sum of |log2(a_i / b_i)| (0: same shapes),
    plus :data:`DEGENERATE_PENALTY` for each loop that is a real loop in one nest and a single
    iteration in the other (a 1x1 conv's schedule says nothing about tiling a 3x3 window);
    infinite when the nests have different depths."""
    if len(a) != len(b):
        return math.inf
    return sum(abs(math.log2(int(x)) - math.log2(int(y)))
               + (DEGENERATE_PENALTY if (int(x) == 1) != (int(y) == 1) else 0.0)
               for x, y in zip(a, b, strict=True))


def anchor_signature(func) -> tuple[str, tuple[int, ...]] | None:
    """(structure, loop extents) of a PrimFunc's anchor block, or None when it has none.
    The structure is the block's name, iterator kinds and body with every number masked, so a
    3x3 conv matches a 3x3 conv of other channel counts but not a depthwise conv or a matmul."""
    block = anchor_block(func)
    return None if block is None else _block_signature(block)


def _block_signature(block) -> tuple[str, tuple[int, ...]]:
    kinds = "".join(str(int(iv.iter_type)) for iv in block.iter_vars)
    body = canonical_buffers(str(block.body))
    structure = re.sub(r"\d+", "#", f"{block.name_hint}|{kinds}|{body}")
    return structure, tuple(int(iv.dom.extent) for iv in block.iter_vars)


def _letters(k: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'ba', ... (no digits: the structure masks numbers)."""
    out = ""
    while True:
        k, r = divmod(k, 26)
        out = chr(ord("a") + r) + out
        if k == 0:
            return out


def canonical_buffers(body: str) -> str:
    """``body`` with its buffers renamed by order of declaration (``buf_a``, ``buf_b``, ...):
    buffer names come from the graph (``lv12``, ``x``, ``matmul_intermediate`` when fused), not
    from the computation, and must not keep a kernel from matching its donors."""
    names = dict.fromkeys(re.findall(r"^\s*(\w+) = T\.Buffer\(", body, flags=re.M))
    renamed = {name: "buf_" + _letters(k) for k, name in enumerate(names)}
    if not renamed:
        return body
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, renamed)) + r")\b")
    return pattern.sub(lambda m: renamed[m.group(1)], body)


def anchor_tile_refits(insts, decisions, anchor: str,
                       extents: Sequence[int]) -> list[tuple[Any, list[int]]]:
    """(instruction, refitted decision) for every tile sampled on the anchor block's own loops
    in a trace (``insts`` in order, ``decisions`` by instruction): the loops the trace's first
    ``get_loops`` on the block named ``anchor`` returns are the block's iterators in order, so
    the i-th of them has ``extents[i]`` iterations in the kernel being scheduled.

    Done before the trace is replayed, so every attempt uses tiles made for this kernel; a
    replay that fails early (another epilogue block) would otherwise leave the donor's tiles,
    sized for other extents, to the anchor-only application (measured: a 6x6 1x1 conv with a
    4x4 donor's tiles ran 50x slower, unparallelized, with a 2304-float accumulator)."""
    position = anchor_loop_positions(insts, anchor)
    out = []
    for inst in insts:
        if inst.kind.name == "SamplePerfectTile" and rv_id(inst.inputs[0]) in position:
            extent = extents[position[rv_id(inst.inputs[0])]]
            out.append((inst, refit_tile(int(extent), [int(x) for x in decisions[inst]])))
    return out


@dataclass(frozen=True)
class Donor:
    """A tuned record usable as a transfer donor."""

    structure: str
    extents: tuple[int, ...]
    trace: Any  # tvm.s_tir.Trace, postprocessing removed
    run_s: float  # the donor's own measured latency (ties: the faster donor first)
    cross_target: bool  # tuned for another target
    workload: str = ""  # the donor kernel's workload key (tuning skips a task's own records)


def donors_from_records(records, *, cross_target: bool) -> list[Donor]:
    out = []
    for rec in records:
        sig = anchor_signature(rec.workload.mod["main"])
        if sig is None or not rec.run_secs:
            continue
        secs = [float(v) for v in rec.run_secs]
        out.append(Donor(sig[0], sig[1], rec.trace.simplified(remove_postproc=True),
                         sum(secs) / len(secs), cross_target, workload_key(rec.workload.mod)))
    return out


_DONORS: contextvars.ContextVar[tuple[Donor, ...]] = contextvars.ContextVar("edgecc_donors",
                                                                            default=())


@contextlib.contextmanager
def using_donors(donors: Sequence[Donor]) -> Iterator[None]:
    """Make ``donors`` the ones the ``transfer-tuning`` pass draws from inside the block."""
    token = _DONORS.set(tuple(donors))
    try:
        yield
    finally:
        _DONORS.reset(token)


def current_donors() -> tuple[Donor, ...]:
    return _DONORS.get()


def ranked(structure: str, extents: Sequence[int], donors: Sequence[Donor]) -> list[Donor]:
    """Donors with the same anchor structure, nearest shapes first (cross-target ones pay
    :data:`CROSS_TARGET_PENALTY`)."""
    scored = []
    for d in donors:
        if d.structure != structure:
            continue
        dist = shape_distance(extents, d.extents)
        if math.isfinite(dist):
            scored.append((dist + (CROSS_TARGET_PENALTY if d.cross_target else 0.0), d.run_s, d))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [d for *_, d in scored]


def _try_donor(func, donor: Donor, target, *, anchor: str, extents: Sequence[int],
               methods: Sequence[str] = ("whole", "anchor")):
    """The schedule of ``func`` (its trace included), or None when the donor's trace does not
    fit ``func`` (whose anchor block is named ``anchor`` and has ``extents``)."""
    import tvm  # noqa: PLC0415
    from tvm.s_tir import Schedule  # noqa: PLC0415
    from tvm.s_tir.meta_schedule.trace_apply import schedule_using_anchor_trace  # noqa: PLC0415

    mod = tvm.IRModule({"main": func})
    trace = donor.trace
    for inst, decision in anchor_tile_refits(trace.insts, trace.decisions, anchor, extents):
        trace = trace.with_decision(inst, decision, remove_postproc=True)

    def provider(inst, inputs, attrs, decision):
        if inst.kind.name == "SamplePerfectTile":  # tiles of other blocks (epilogues)
            return refit_tile(int(sch.get(inputs[0]).extent), [int(x) for x in decision])
        return decision

    # 1. the whole trace (same epilogue blocks);
    # 2. else only the anchor block's instructions, the epilogue inlined (MetaSchedule's
    #    anchor-trace application for fused variants).
    for attempt in methods:
        sch = Schedule(mod)
        try:
            if attempt == "whole":
                trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=provider)
            else:
                schedule_using_anchor_trace(sch, trace, target)
            if postprocess(sch, target):
                return sch
        except Exception:  # noqa: BLE001  (TVM raises several kinds; a misfit is not an error)
            continue
    return None


def transfer_schedules(func, donors: Sequence[Donor], target, *, limit: int,
                       attempts: int = MAX_ATTEMPTS,
                       whole_only: bool = False) -> list[tuple[Any, Donor]]:
    """Up to ``limit`` (schedule, donor) pairs for an unscheduled PrimFunc, nearest donors
    first, trying at most ``attempts`` donors. ``whole_only``: only donors whose whole trace
    replays on ``func``, so the schedule's trace is a sequence MetaSchedule's own search makes
    for it (with anchor-only transfers among tuning seeds, the search once crashed replaying a
    mutated trace)."""
    block = anchor_block(func)
    if block is None:
        return []
    structure, extents = _block_signature(block)
    found = []
    for donor in ranked(structure, extents, donors)[:attempts]:
        sch = _try_donor(func, donor, target, anchor=block.name_hint, extents=extents,
                         methods=("whole",) if whole_only else ("whole", "anchor"))
        if sch is not None:
            found.append((sch, donor))
            if len(found) == limit:
                break
    return found


def keeps_inner_tiles(donor: Donor, anchor: str, extents: Sequence[int]) -> bool:
    """False when refitting ``donor``'s tiles to ``extents`` leaves an innermost factor (what
    the donor vectorized or kept in registers) at 1 where the donor's was larger: a prime or odd
    extent the donor's tiling cannot be refitted to (measured: ViT-tiny's 197-token softmax
    ran 47 ms on a 32-token donor's refitted trace, 4 ms on the default schedule)."""
    if len(donor.extents) != len(extents):  # not a candidate anyway (shape_distance: inf)
        return True
    decisions = donor.trace.decisions
    for inst, new in anchor_tile_refits(donor.trace.insts, decisions, anchor, extents):
        if math.prod(new) > 1 and int(decisions[inst][-1]) > 1 and new[-1] == 1:
            return False
    return True


def transfer_func(func, donors: Sequence[Donor], target):
    """(scheduled func, donor) for an unscheduled PrimFunc, or None. Donors whose tiling does
    not refit to the kernel (:func:`keeps_inner_tiles`) are passed over: the default schedule
    that follows fits any shape."""
    block = anchor_block(func)
    if block is None:
        return None
    extents = _block_signature(block)[1]
    donors = [d for d in donors if keeps_inner_tiles(d, block.name_hint, extents)]
    found = transfer_schedules(func, donors, target, limit=1)
    return (found[0][0].mod["main"], found[0][1]) if found else None
