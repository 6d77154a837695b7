"""``edgecc tune``: MetaSchedule (XGBoost cost model) auto-tuning of a model's fused kernels for a
target, locally or on a device behind a TVM RPC tracker, into a reusable tuning log.

The tuner extracts its tasks from the IR exactly where the compile pipeline applies records
(just before ``apply-tuning``), so what is tuned is what gets compiled. The budget is per task
(``trials_per_task``), not per model. Records are written as they are measured: Ctrl-C, or the
time budget running out, keeps every record so far, and a re-run resumes (tasks whose budget is
spent are skipped; a workload tuned for another model is reused).

Each task's search is seeded: before it starts, the schedules of the most similar kernels in the
logs (this log's other kernels, the target's shipped logs, other CPU targets' logs), transferred
to the task as ``edgecc compile`` would (:mod:`edgecc.schedules.transfer`), are measured and committed as
records, and so is the task's rule-tiled schedule (:mod:`edgecc.schedules.rule_tiling`). The evolutionary
search starts its population from a task's best records, so a good neighbour's schedule, or the
rule's, is where it begins instead of random samples. A task is seeded once per log
(``meta.json: seeded``, ``rule_seeded``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..build import cache
from ..schedules import tuning_log
from ..schedules.trace import kernel_flops
from .._threads import physical_cores
from ..devices.rpc import RPCSettings
from ..errors import EdgeccError
from ..targets import Target, get_target

Progress = Callable[[str], None]
SEED_DONORS = 3  # transferred schedules measured per task before its search starts


@dataclass
class TaskState:
    name: str
    weight: float
    flop: float
    done_before: int
    budget: int
    measured: int = 0
    best_us: float | None = None


@dataclass(frozen=True)
class TuneResult:
    log_dir: Path
    tasks: tuple[TaskState, ...]
    trials_run: int
    seconds: float
    stopped: str | None  # "interrupted", "time budget", or None when every budget was spent
    records_added: int
    seeded: int = 0  # transferred schedules measured before the search (count as trials)
    measured: str = tuning_log.COLD  # how candidates were timed: tuning_log.COLD or WARM

    @property
    def skipped(self) -> int:
        return sum(1 for t in self.tasks if t.done_before >= t.budget)

    def estimate_ms(self) -> float | None:
        if any(t.best_us is None for t in self.tasks):
            return None
        return sum(t.weight * t.best_us for t in self.tasks) / 1e3  # type: ignore[operator]


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise EdgeccError(f"bad duration {text!r}: use e.g. 90s, 10m or 1.5h") from None
    if value <= 0:
        raise EdgeccError(f"bad duration {text!r}: must be positive")
    return value


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def tune_model(
    model,
    *,
    target: str | Target = "x86_64",
    trials_per_task: int = 64,
    time_budget_s: float | None = None,
    log_dir: str | Path | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Sequence[Any] | None = None,
    rpc: RPCSettings | None = None,
    num_cores: int | None = None,
    on_progress: Progress | None = print,
    seed: int = 0,
    keep_best: int | None = None,
    quantize=None,
    transfer_seeds: bool = True,
    cache_flush: bool | None = None,
) -> TuneResult:
    """Tune ``model``'s kernels for ``target``; records go to ``log_dir`` (default: the user's
    log library, :func:`tuning_log.user_log_dir`, which compiles apply). ``quantize`` (an :class:`edgecc.compress.quantize.Quantization`) tunes the
    kernels of that compressed variant, exactly as ``compile`` with the same option builds it.
    ``cache_flush`` chooses how a new log's candidates are timed (True or None: caches flushed
    before each run, the weights cold as inside a model; False: warm); an existing log is
    resumed the way it was timed (:func:`tuning_log.measurement_for`)."""

    tgt = target if isinstance(target, Target) else get_target(target)
    if tgt.is_gpu:
        raise EdgeccError(f"tuning {tgt.name}: CUDA targets are not tuned yet (dlight default "
                          "schedules are used); tune a CPU target")
    if trials_per_task < 1:
        raise EdgeccError("--trials must be at least 1")
    log = on_progress or (lambda _msg: None)
    if rpc is None:
        cores = num_cores or physical_cores()
    else:
        from ..devices.remote import check_device, probe_device  # noqa: PLC0415

        check_device(rpc)
        info = probe_device(rpc, arch=tgt.arch, what=f"tuning for {tgt.name}") or {}
        cores = num_cores or int(info.get("threads") or 0) or 4
    log_dir = Path(log_dir) if log_dir else tuning_log.user_log_dir(tgt)
    measured = tuning_log.measurement_for(log_dir, cache_flush)
    tuning_log.ensure_log(log_dir, tgt, cache.tvm_version(), measured=measured)

    import tvm  # noqa: PLC0415
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    t0 = time.perf_counter()
    name, mod = tuning_module(model, tgt, input_shapes=input_shapes, quantize=quantize,
                              example_inputs=example_inputs, log=log)
    tune_target = tvm.target.Target({**tgt.target_json(), "num-cores": int(cores)})
    db = tuning_log.open_database(log_dir)
    with tune_target:
        extracted = ms.relax_integration.extract_tasks(mod, tune_target)
    spent = tuning_log.spent(log_dir)
    keys = [tuning_log.workload_key(task.dispatched[0]) for task in extracted]
    records_before = len(db)
    # set by Ctrl-C or the time budget: seeding and search stop after the batch in flight
    stop = SimpleNamespace(stop_reason=None)
    old_handler = _install_sigint(stop, log)
    try:
        states = _task_states(extracted, keys, db, spent, trials_per_task)
        tuned = [k for k, st in zip(keys, states, strict=True) if st.done_before >= st.budget]
        log(f"[tune] {name} for {tgt.name} ({cores} cores{', RPC ' + rpc.key if rpc else ''}): "
            f"{len(states)} tasks, {len(tuned)} already tuned in {log_dir}, "
            f"budget {trials_per_task} trials/task, candidates timed {measured}"
            + (f", time budget {_fmt_s(time_budget_s)}" if time_budget_s else ""))
        seeds = 0
        if transfer_seeds:
            seeds = _measure_seeds(
                ms, extracted, keys, db, tgt=tgt, tune_target=tune_target, rpc=rpc,
                measured=measured,
                log_dir=log_dir, skip=set(tuned), log=log, stop=stop)
        if seeds:  # seeds count toward their task's budget
            states = _task_states(extracted, keys, db, spent, trials_per_task)
        todo = [i for i, s in enumerate(states) if s.done_before < s.budget]
        trials_run = 0
        if todo and stop.stop_reason is None:
            trials_run = _search(ms, extracted, keys, states, todo, db, tgt=tgt, rpc=rpc,
                                 measured=measured,
                                 cores=cores, seed=seed, log_dir=log_dir, log=log,
                                 time_budget_s=time_budget_s, t0=t0, stop=stop)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    stopped = stop.stop_reason
    records_added = len(tuning_log.open_database(log_dir)) - records_before
    if keep_best is not None:
        before, after = tuning_log.compact(log_dir, keep=keep_best)
        log(f"[tune] compacted {log_dir}: kept the best {keep_best} record(s) per workload "
            f"({before} -> {after} records)")
    result = TuneResult(log_dir=log_dir, tasks=tuple(states), trials_run=trials_run,
                        seconds=time.perf_counter() - t0, stopped=stopped,
                        records_added=records_added, seeded=seeds, measured=measured)
    return result


def tuning_module(model, tgt: Target, *, input_shapes=None, quantize=None, example_inputs=None,
                  log: Progress = lambda _msg: None):
    """(model name, IR module) as the compile pipeline has it just before ``apply-tuning``:
    the module whose kernels are tuned and matched against the records."""
    from .. import frontend, passes  # noqa: PLC0415

    shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    src = frontend.model_source(model, example_inputs=example_inputs)
    raw, name = src.raw, src.name
    calibration = None if quantize is None else quantize.calibration_feeds(src, shapes=shapes)
    if calibration is not None:
        log(f"[edgecc] calibrating int8 on {len(calibration)} samples")
        raw, _ = quantize.to_int8(raw, calibration)
    imported = frontend.import_model(model, src, raw=raw, shapes=shapes,
                                     example_inputs=example_inputs)
    names = passes.with_quantization(passes.resolve(passes.default_pipeline(tgt), tgt),
                                     quantize.mode if quantize else None)
    return name, passes.apply(imported.mod, passes.tuning_prefix(names), target=tgt)


def kernel_workloads(mod) -> dict[str, str]:
    """Kernel name -> workload key (as the tuner and the database key it) of each kernel in a
    :func:`tuning_module`."""
    import tvm  # noqa: PLC0415

    return {gv.name_hint: tuning_log.workload_key(
                tvm.IRModule({"main": f.with_attr("global_symbol", "main")}))
            for gv, f in mod.functions.items() if type(f).__name__ == "PrimFunc"}


def _task_states(extracted, keys: list[str], db, spent: dict[str, int],
                 budget: int) -> list[TaskState]:
    """Each task's trials so far (the log's history, or its records) and best latency."""
    states = []
    for task, key in zip(extracted, keys, strict=True):
        done = spent.get(key, 0)
        if db.has_workload(task.dispatched[0]):
            done = max(done, len(db.get_top_k(db.commit_workload(task.dispatched[0]), budget)))
        states.append(TaskState(task.task_name, float(task.weight), _flop(task), done, budget))
        if done:
            best = db.get_top_k(db.commit_workload(task.dispatched[0]), 1)
            if best:
                states[-1].best_us = _run_us(best[0].run_secs)
    return states


def _search(ms, extracted, keys: list[str], states: list[TaskState], todo: list[int], db, *,
            tgt: Target, rpc: RPCSettings | None, measured: str, cores: int, seed: int,
            log_dir: Path, log: Progress, time_budget_s: float | None, t0: float,
            stop: SimpleNamespace) -> int:
    """MetaSchedule's evolutionary search (XGBoost cost model) over the ``todo`` tasks, each to
    its budget; returns the trials measured. Trial counts go to the log's meta.json."""
    log(f"[tune] searching a first batch of candidates for each of the {len(todo)} task(s) "
        "(about 15 s each on 2 cores); measurements are reported as they come back")
    work = Path(tempfile.mkdtemp(prefix="edgecc-tune-"))
    progress = _make_progress(ms, states, todo, log, time_budget_s, t0, stop)
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    old_level = ms_logger.level
    ms_logger.setLevel(logging.WARNING)
    finished = False  # every budget spent (not stopped, not crashed)
    try:
        # group tasks by remaining budget: one tune_tasks call per group
        groups: dict[int, list[int]] = {}
        for i in todo:
            groups.setdefault(states[i].budget - states[i].done_before, []).append(i)
        for remaining, idx in sorted(groups.items(), reverse=True):
            ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                [extracted[i] for i in idx], str(work / "logs"), num_threads=cores
                if rpc is None else "physical", seed=seed)
            progress.set_group(idx)
            ms.tune_tasks(
                tasks=ctxs, task_weights=weights, work_dir=str(work),
                max_trials_global=remaining * len(idx), max_trials_per_task=remaining,
                num_trials_per_iter=min(remaining, 32), builder=_builder(ms, tgt, rpc),
                runner=_counting_runner(
                    ms, _runner(ms, rpc, measured=measured), log, t0,
                    total=sum(states[i].budget - states[i].done_before for i in todo)),
                database=db, cost_model="xgb",
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                   progress],
                task_scheduler="gradient")
            if stop.stop_reason:
                break
        finished = stop.stop_reason is None
    except (KeyboardInterrupt, RuntimeError):
        # a second Ctrl-C aborts at once; raised inside TVM's C++ loop it may surface as a
        # RuntimeError: either way every record measured so far is already in the log
        if stop.stop_reason != "interrupted":
            raise
    finally:
        ms_logger.setLevel(old_level)
        shutil.rmtree(work, ignore_errors=True)
        # a search that ran to its end spent every budget (a task whose search space holds
        # fewer candidates than its budget is done too)
        tuning_log.record_spent(log_dir, {
            k: max(s.done_before + s.measured, s.budget if finished else 0)
            for k, s in zip(keys, states, strict=True)})
    return progress.trials


def _measure_seeds(ms, extracted, keys: list[str], db, *, tgt: Target, tune_target,
                   rpc: RPCSettings | None, measured: str, log_dir: Path, skip: set[str],
                   log: Progress, stop: SimpleNamespace) -> int:
    """Measure up to :data:`SEED_DONORS` transferred schedules for each task not yet seeded in
    this log (and not in ``skip``), and the rule-based default schedule
    (:mod:`edgecc.schedules.rule_tiling`) of each task not yet rule-seeded in this log (a task whose
    budget is spent too: one measurement, and the rule is often hard to beat); commit them to
    ``db`` and return how many were recorded. Once ``stop.stop_reason`` is set (Ctrl-C) it
    stops after the step in flight."""
    from ..schedules.rules import rule_schedule  # noqa: PLC0415

    seeded = tuning_log.seeded(log_dir)
    want = [i for i, k in enumerate(keys) if k not in seeded and k not in skip]
    cands = _transfer_candidates(extracted, keys, want, tgt=tgt, tune_target=tune_target,
                                 log_dir=log_dir, stop=stop) if want else []
    ruled = tuning_log.seeded(log_dir, "rule")
    rule_want = [i for i, k in enumerate(keys) if k not in ruled]
    rules = [(i, sch) for i in rule_want if not stop.stop_reason
             and (sch := rule_schedule(extracted[i].dispatched[0]["main"], tune_target))]
    if stop.stop_reason:
        return 0
    recorded = 0
    cands += rules
    if cands:
        log(f"[tune] seeding: measuring {len(cands) - len(rules)} schedule(s) transferred from "
            f"similar tuned kernels and {len(rules)} rule-based default schedule(s) for "
            f"{len({i for i, _ in cands})} task(s)")
        for i, sch, run_secs, args in _measure(ms, cands, tgt=tgt, tune_target=tune_target,
                                               rpc=rpc, measured=measured, stop=stop):
            db.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, db.commit_workload(extracted[i].dispatched[0]), run_secs,
                tune_target, args))
            recorded += 1
    if not stop.stop_reason:
        tuning_log.record_seeded(log_dir, [keys[i] for i in want])
        tuning_log.record_seeded(log_dir, [keys[i] for i in rule_want], "rule")
    return recorded


def _transfer_candidates(extracted, keys: list[str], want: list[int], *, tgt: Target,
                         tune_target, log_dir: Path, stop: SimpleNamespace) -> list:
    """(task index, schedule) for each task in ``want``: its nearest donors' whole traces."""
    from ..schedules.transfer import donors_from_records, transfer_schedules  # noqa: PLC0415

    own_logs = [log_dir, *(d for d in tuning_log.shipped_logs(tgt)
                           if d.resolve() != log_dir.resolve())]
    donors = (donors_from_records(tuning_log.read_records(own_logs), cross_target=False)
              + donors_from_records(tuning_log.read_records(
                  tuning_log.donor_logs(tgt, use_shipped=True)), cross_target=True))
    cands = []
    for i in want:
        if stop.stop_reason:
            break
        others = [d for d in donors if d.workload != keys[i]]  # not the task's own records
        cands += [(i, sch) for sch, _ in transfer_schedules(
            extracted[i].dispatched[0]["main"], others, tune_target, limit=SEED_DONORS,
            whole_only=True)]
    return cands


def _measure(ms, tagged: list, *, tgt: Target, tune_target, rpc: RPCSettings | None,
             measured: str, stop: SimpleNamespace) -> list:
    """Build and time the (tag, schedule) pairs ``tagged`` with the tuner's builder and runner:
    (tag, schedule, run_secs, args_info) for each one that built and ran."""
    built = _builder(ms, tgt, rpc).build(
        [ms.builder.BuilderInput(sch.mod, tune_target) for _, sch in tagged])
    ok = [(tag, sch, b.artifact_path,
           ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True))
          for (tag, sch), b in zip(tagged, built, strict=True) if b.error_msg is None]
    runner = _runner(ms, rpc, measured=measured)
    try:
        if stop.stop_reason:
            return []
        futures = runner.run([ms.runner.RunnerInput(path, device_type="cpu", args_info=args)
                              for _, _, path, args in ok])  # CPU targets only are tuned
        out = []
        for (tag, sch, _, args), future in zip(ok, futures, strict=True):
            res = future.result()
            if res.error_msg is None and res.run_secs:
                out.append((tag, sch, res.run_secs, args))
        return out
    finally:
        for _, _, path, _ in ok:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        # shut the runner's worker pool down here: left to the garbage collector, it may be
        # collected on one of its own threads, which cannot join itself
        if getattr(runner, "pool", None) is not None:
            runner.pool.shutdown()


def _flop(task) -> float:
    return float(kernel_flops(task.dispatched[0]))


def _run_us(run_secs) -> float | None:
    if not run_secs:
        return None
    vals = [float(v) for v in run_secs]
    return sum(vals) / len(vals) * 1e6


def _builder(ms, tgt: Target, rpc: RPCSettings | None):
    from .builder import cross_export_aarch64, export_x86_64, fast_build  # noqa: PLC0415

    export = None
    if rpc is not None:  # a linked .so: the device may have no compiler
        export = cross_export_aarch64 if tgt.arch == "aarch64" else export_x86_64
    return ms.builder.LocalBuilder(f_build=fast_build, f_export=export,
                                   max_workers=os.cpu_count() or 1, timeout_sec=60)


def _runner(ms, rpc: RPCSettings | None, *, measured: str):
    evaluator = _evaluator(ms, measured)
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=30, evaluator_config=evaluator)
    config = ms.runner.RPCConfig(tracker_host=rpc.tracker_host, tracker_port=rpc.tracker_port,
                                 tracker_key=rpc.key, session_timeout_sec=rpc.session_timeout_s)
    create = None
    if rpc.token:  # MetaSchedule's own session request cannot present a token
        import functools  # noqa: PLC0415

        from ..devices.remote import session_for_config  # noqa: PLC0415

        create = functools.partial(session_for_config, token=rpc.token)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1,
                               f_create_session=create)


def _install_sigint(stop: SimpleNamespace, log: Progress):
    """First Ctrl-C: finish the batch in flight, keep its records, stop. Second: abort."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigint(signum, frame):
        if stop.stop_reason == "interrupted":
            raise KeyboardInterrupt
        stop.stop_reason = "interrupted"
        log("[tune] Ctrl-C: stopping after the batch being measured (Ctrl-C again to abort "
            "now); every record is kept")

    return signal.signal(signal.SIGINT, on_sigint)


def _evaluator(ms, measured: str):
    """How each candidate is timed: cold, 20 single runs, each after flushing the CPU caches
    of every buffer but the kernel's input (TVM's cache_flush_cpu_non_first_arg), so its weights
    come from memory as in a model where every other kernel's weights pass through the cache
    between two of its calls; warm, runs repeated for 50 ms on the same buffers."""
    if measured == tuning_log.COLD:
        return ms.runner.EvaluatorConfig(number=1, repeat=20, min_repeat_ms=0,
                                         enable_cpu_cache_flush=True)
    return ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50,
                                     enable_cpu_cache_flush=False)


def _counting_runner(ms, inner, log: Progress, t0: float, *, total: int):
    """Wraps the runner to report each batch as it is sent for measurement: the per-task
    results only come back after the scheduler's first round over every task."""
    from tvm.ir.utils import derived_object  # noqa: PLC0415

    @derived_object
    class _Counting(ms.runner.PyRunner):
        def __init__(self):
            super().__init__()
            self.sent = 0

        def run(self, runner_inputs):
            futures = inner.run(runner_inputs)
            self.sent += len(runner_inputs)
            log(f"[tune] measuring: {self.sent}/{total} candidates sent "
                f"(elapsed {_fmt_s(time.perf_counter() - t0)})")
            return futures

    return _Counting()


def _make_progress(ms, states: list[TaskState], todo: list[int], log: Progress,
                   time_budget_s: float | None, t0: float, stop: SimpleNamespace):
    from tvm.ir.utils import derived_object  # noqa: PLC0415

    total_budget = sum(states[i].budget - states[i].done_before for i in todo)

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self):
            self.trials = 0
            self.group: list[int] = []

        def set_group(self, idx):
            self.group = idx

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            st = states[self.group[task_id]]
            for res in runner_results:
                us = _run_us(res.run_secs) if res.error_msg is None else None
                if us is not None and (st.best_us is None or us < st.best_us):
                    st.best_us = us
            st.measured += len(runner_results)
            self.trials += len(runner_results)
            elapsed = time.perf_counter() - t0
            eta = elapsed / self.trials * max(total_budget - self.trials, 0)
            known = [s for s in states if s.best_us is not None]
            est = sum(s.weight * s.best_us for s in known) / 1e3  # type: ignore[operator]
            best = f"{st.best_us:.1f} us" if st.best_us is not None else "n/a"
            log(f"[tune] {self.trials}/{total_budget} trials  {st.name}: "
                f"{st.done_before + st.measured}/{st.budget}, best {best}  "
                f"end-to-end est. {est:.3f} ms ({len(known)}/{len(states)} tasks)  "
                f"elapsed {_fmt_s(elapsed)}  ETA {_fmt_s(eta)}")
            if (time_budget_s is not None and elapsed > time_budget_s
                    and stop.stop_reason is None):
                stop.stop_reason = "time budget"
                log(f"[tune] time budget of {_fmt_s(time_budget_s)} reached: stopping")
            if stop.stop_reason is not None:
                for i, record in enumerate(task_scheduler.tasks_):
                    if not record.is_terminated:
                        task_scheduler.terminate_task(i)

    return _Progress()
