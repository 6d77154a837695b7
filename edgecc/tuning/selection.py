"""Choose each kernel's tuned schedule by its speed inside the model, not alone.

MetaSchedule measures every candidate schedule on its own: its own buffers, back-to-back runs
(with a warm cache, or flushed before each run in a log timed cold: see ``tune``). The fastest
schedule alone is not always the fastest in the model (measured, warm: a 1x1 conv of
mobilenetv2 ran 26 us alone and 38 us inside the model with one schedule, 28 us with the
runner-up). This step takes each kernel's ``candidates`` fastest records in a log, compiles the
model once per rank (build *i* uses every kernel's *i*-th best record), times every kernel
inside each build (the VM's instrument hook, builds alternating round by round), and combines
per kernel the record that ran fastest in the model. The combined
build is then timed end to end against the rank builds, alternating again; the log keeps the
records of whichever build was fastest (one record per kernel of the model).

It runs the model on this machine, so the target must be one this machine runs.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..schedules import tuning_log
from ..errors import EdgeccError
from ..targets import Target, get_target

Progress = Callable[[str], None]
PREPACKED_SUFFIX = "_prepacked"  # what prepack-weights appends to a kernel's name
MARGIN = 0.02  # a runner-up replaces the best record only when this much faster in the model
COMBINED = "combined"  # the label of the build that combines each kernel's in-model choice
END_TO_END_MARGIN = 0.01  # another build replaces rank 1 only when this much faster end to end


@dataclass(frozen=True)
class KernelChoice:
    name: str  # the kernel (as the tuner names its task)
    key: str  # its workload key
    isolated_us: tuple[float, ...]  # each rank's record, as measured by the tuner
    in_model_us: tuple[float, ...]  # each rank's record, timed inside the model
    chosen: int  # the rank the combined build uses (0: the fastest alone)


@dataclass(frozen=True)
class SelectionResult:
    log_dir: Path
    kernels: tuple[KernelChoice, ...]
    end_to_end_ms: dict[str, float]  # build label -> median latency
    kept: str | None  # the build whose records the log keeps (None: nothing to choose)
    dropped: int  # records removed from the log

    @property
    def changed(self) -> int:
        """Kernels whose kept record is not their fastest alone."""
        if self.kept is None:
            return 0
        return sum(1 for k in self.kernels if _rank_in(self.kept, k) != 0)


def _rank_in(label: str, k: KernelChoice) -> int:
    if label == COMBINED:
        return k.chosen
    return min(int(label.removeprefix("rank")) - 1, len(k.isolated_us) - 1)


def choose(in_model_us: Sequence[float], *, margin: float = MARGIN) -> int:
    """The rank to use: the fastest in the model, unless it beats rank 0 (the fastest alone) by
    less than ``margin`` (then rank 0: differences that small are noise)."""
    best = min(range(len(in_model_us)), key=lambda i: in_model_us[i])
    return best if in_model_us[best] < in_model_us[0] * (1 - margin) else 0


def keep_build(end_to_end_ms: Mapping[str, float], *, margin: float = END_TO_END_MARGIN) -> str:
    """The build whose records the log keeps: the fastest end to end, unless it beats rank 1
    (every kernel on its fastest-alone record) by less than ``margin``."""
    best = min(end_to_end_ms, key=end_to_end_ms.get)
    if end_to_end_ms[best] > end_to_end_ms["rank1"] * (1 - margin):
        return "rank1"
    return best


def kernel_times(profile: Mapping[str, float], names: Mapping[str, str]) -> dict[str, float]:
    """Per workload key, the seconds per run its kernels took in a profile (``symbol ->
    seconds``, see :meth:`edgecc.runtime.Model.profile_kernels`); ``names`` maps kernel names
    (before prepack-weights renamed them) to workload keys. Other calls (VM builtins) are left
    out."""
    out: dict[str, float] = {}
    for symbol, seconds in profile.items():
        name = symbol if symbol in names else symbol.removesuffix(PREPACKED_SUFFIX)
        if name in names:
            out[names[name]] = out.get(names[name], 0.0) + seconds
    return out


def select_in_model(
    model,
    *,
    target: str | Target,
    log_dir: str | Path,
    candidates: int = 3,
    rounds: int = 5,
    runs: int = 20,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Sequence | None = None,
    quantize=None,
    on_progress: Progress | None = print,
) -> SelectionResult:
    """Re-choose, inside the compiled model, between the ``candidates`` fastest records of each
    of ``model``'s kernels in the log ``log_dir`` (see the module docstring); the log keeps one
    record per kernel of the model, other workloads' records stay."""
    from ..build.compiler import compile_model  # noqa: PLC0415
    from ..runtime import load  # noqa: PLC0415
    from .tune import kernel_workloads, tuning_module  # noqa: PLC0415

    tgt = target if isinstance(target, Target) else get_target(target)
    if candidates < 2:
        raise EdgeccError("--select-in-model needs at least 2 candidates per kernel")
    if rounds < 1 or runs < 1:
        raise EdgeccError("rounds and runs must be at least 1")
    check_runs_here(tgt)
    log_dir = Path(log_dir)
    tuning_log.check_log(log_dir, tgt)
    log = on_progress or (lambda _msg: None)
    _, mod = tuning_module(model, tgt, input_shapes=input_shapes, quantize=quantize,
                           example_inputs=example_inputs, log=log)
    names = kernel_workloads(mod)
    ranked = {k: v for k, v in tuning_log.ranked_records(log_dir, candidates).items()
              if k in set(names.values())}
    depth = max((len(v) for v in ranked.values()), default=0)
    if depth < 2:
        log(f"[select] nothing to choose: no kernel of the model has more than one record in "
            f"{log_dir}")
        return SelectionResult(log_dir, (), {}, None, 0)

    picks = {f"rank{r + 1}": {k: v[min(r, len(v) - 1)][1] for k, v in ranked.items()}
             for r in range(depth)}
    log(f"[select] {len(ranked)} kernel(s) with records in {log_dir}: compiling the model "
        f"{depth} times, build i with each kernel's i-th fastest record")
    with tempfile.TemporaryDirectory(prefix="edgecc-select-") as tmp:
        work = Path(tmp)

        def build(label: str):
            tuning_log.write_candidate_log(log_dir, work / f"{label}.log", picks[label])
            compile_model(model, target=tgt, output=work / label, input_shapes=input_shapes,
                          example_inputs=example_inputs, quantize=quantize, use_cache=False,
                          tuning_logs=[work / f"{label}.log"], use_shipped_logs=False,
                          isa_variants=False)  # time the build these records are for
            return load(work / label)

        built = {label: build(label) for label in picks}
        log(f"[select] timing every kernel inside each build: {rounds} rounds x {runs} runs, "
            "builds alternating")
        samples: dict[str, list[dict[str, float]]] = {label: [] for label in built}
        for _ in range(rounds):
            for label, m in built.items():
                samples[label].append(kernel_times(m.profile_kernels(runs=runs), names))
        kernels = _choices(ranked, names, samples)
        picks[COMBINED] = {k.key: ranked[k.key][k.chosen][1] for k in kernels}
        same = next((label for label in built if picks[COMBINED] == picks[label]), None)
        if same is not None:
            log(f"[select] the in-model choice is build {same}'s")
        else:
            built[COMBINED] = build(COMBINED)
        log(f"[select] timing {', '.join(built)} end to end: {rounds} rounds, alternating")
        e2e = _end_to_end(built, rounds=rounds)
    kept = keep_build(e2e)
    dropped = tuning_log.keep_chosen(log_dir, picks[kept])
    log("[select] end to end: " + ", ".join(f"{label} {ms:.3f} ms" for label, ms in e2e.items())
        + f"; the log keeps {kept}'s records")
    return SelectionResult(log_dir, tuple(kernels), e2e, kept, dropped)


def _choices(ranked: dict[str, list[tuple[float, str]]], names: Mapping[str, str],
             samples: dict[str, list[dict[str, float]]]) -> list[KernelChoice]:
    """Each ranked kernel's per-rank times (median over rounds, in the build of that rank) and
    the rank :func:`choose` picks."""
    by_key = {}
    for name, key in names.items():
        by_key.setdefault(key, name)
    out = []
    for key, records in ranked.items():
        in_model = tuple(
            statistics.median(s.get(key, float("inf")) for s in samples[f"rank{r + 1}"]) * 1e6
            for r in range(len(records)))
        out.append(KernelChoice(by_key[key], key, tuple(secs * 1e6 for secs, _ in records),
                                in_model, choose(in_model)))
    return out


def _end_to_end(built: dict, *, rounds: int) -> dict[str, float]:
    """Median latency (ms) of each loaded build over ``rounds`` alternating rounds."""
    times: dict[str, list[float]] = {label: [] for label in built}
    for _ in range(rounds):
        for label, m in built.items():
            times[label].append(m.benchmark(repeat=5, min_repeat_ms=50).p50_ms)
    return {label: statistics.median(v) for label, v in times.items()}


def check_runs_here(tgt: Target) -> None:
    """Refuse a target this machine cannot run: only this machine's own target and the
    baseline target of its arch (named after the arch: ``x86_64``, ``aarch64``) qualify."""
    here = get_target("native")
    if tgt.is_gpu or tgt.name not in (here.name, here.arch):
        raise EdgeccError(f"--select-in-model runs the model on this machine, which runs "
                          f"{here.name} and {here.arch} code, not {tgt.name}; select on a "
                          f"machine of that target")
