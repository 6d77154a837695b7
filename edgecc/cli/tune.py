"""``edgecc tune``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import EdgeccError
from .common import parse_input_shape, _add_quantize_args, _quantization


def register_tune(sub) -> None:
    p = sub.add_parser("tune", help="auto-tune a model's kernels for a target (MetaSchedule)",
                       description="Tune the fused kernels of MODEL for TARGET with MetaSchedule "
                       "and an XGBoost cost model, locally or on a device behind a TVM RPC "
                       "tracker. Records go to a tuning log (default: your log library, "
                       "~/.local/share/edgecc/tuning_logs/<target>/, or $EDGECC_USER_TUNING_LOGS) "
                       "that 'edgecc compile' applies. Re-running resumes; Ctrl-C keeps every record.")
    p.add_argument("model", help="the ONNX model file")
    p.add_argument("-t", "--target", default="x86_64",
                   help="named target, raw triple, or 'native' (this machine's CPU)")
    p.add_argument("--trials", type=int, default=64, metavar="N",
                   help="trials per task (default 64); tasks already at N are skipped")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="stop after this long, keeping all records (e.g. 90s, 10m, 1h)")
    p.add_argument("--log-dir", type=Path, help="tuning log directory (default "
                   "~/.local/share/edgecc/tuning_logs/<target>/, which compiles apply)")
    p.add_argument("--input-shape", action="append", type=parse_input_shape, default=[],
                   metavar="NAME=D0,D1,...", help="pin an input's shape; repeatable")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on a device registered "
                   "with this TVM RPC tracker")
    p.add_argument("--rpc-key", help="the device key at the tracker")
    p.add_argument("--rpc-token-file", metavar="F", help="the device's token file (what "
                   "edgecc-run serve made on its first start; copy it from the device)")
    p.add_argument("--num-cores", type=int, help="the device's core count (default: this "
                   "machine's physical cores; over RPC: what edgecc-run serve reports, else 4)")
    p.add_argument("--keep-best", type=int, metavar="N", help="afterwards, keep only the N "
                   "fastest records per kernel (small logs to ship; trial counts are kept)")
    p.add_argument("--select-in-model", type=int, metavar="K", help="afterwards, compile the "
                   "model with each kernel's K fastest records, time every kernel inside the "
                   "model, and keep per kernel the record that is fastest there (checked end to "
                   "end; runs on this machine, not over RPC)")
    p.add_argument("--no-transfer-seeds", dest="transfer_seeds", action="store_false",
                   help="start each task's search from random samples only, without first "
                   "measuring the schedules of similar tuned kernels in the logs")
    p.add_argument("--cache-flush", action=argparse.BooleanOptionalAction, default=None,
                   help="time each candidate with the CPU caches flushed before every run, but "
                   "for the kernel's input: its weights come from memory, as inside a model "
                   "(the default for a new log); --no-cache-flush times repeated runs on warm "
                   "buffers. An existing log is resumed the way it was timed")
    _add_quantize_args(p)
    p.add_argument("-q", "--quiet", action="store_true", help="only the final summary")
    p.set_defaults(drive=drive_tune)


def drive_tune(args) -> int:
    from ..devices.rpc import RPCSettings  # noqa: PLC0415
    from ..tuning.tune import parse_duration, tune_model  # noqa: PLC0415

    rpc = None
    if args.rpc_tracker or args.rpc_key:
        rpc = RPCSettings.parse(args.rpc_tracker or "", args.rpc_key or "",
                                token_file=args.rpc_token_file)
    budget = parse_duration(args.time_budget) if args.time_budget else None
    select = args.select_in_model
    if select is not None:
        from ..tuning.selection import check_runs_here  # noqa: PLC0415
        from ..targets import get_target  # noqa: PLC0415

        if select < 2:
            raise EdgeccError("--select-in-model needs K >= 2 (records compared per kernel)")
        if rpc is not None:
            raise EdgeccError("--select-in-model runs the model on this machine; it does not "
                              "go with --rpc-tracker")
        check_runs_here(get_target(args.target))
    log = (lambda msg: None) if args.quiet else (  # noqa: E731
        lambda msg: print(msg, file=sys.stderr, flush=True))
    keep = args.keep_best
    r = tune_model(args.model, target=args.target, trials_per_task=args.trials,
                   time_budget_s=budget, log_dir=args.log_dir, input_shapes=dict(args.input_shape),
                   rpc=rpc, num_cores=args.num_cores, on_progress=log,
                   keep_best=max(keep, select or 0) if keep else None,
                   quantize=_quantization(args), transfer_seeds=args.transfer_seeds,
                   cache_flush=args.cache_flush)
    width = max([len(t.name) for t in r.tasks] + [4])
    print(f"{'task':<{width}}  weight  trials  best (us)")
    for t in r.tasks:
        best = f"{t.best_us:10.2f}" if t.best_us is not None else "       n/a"
        print(f"{t.name:<{width}}  {t.weight:6.0f}  {t.done_before + t.measured:6d}  {best}")
    est = r.estimate_ms()
    measured = r.trials_run + r.seeded
    per100 = f", {r.seconds / measured * 100:.1f} s per 100 trials" if measured else ""
    seeds = f" (+{r.seeded} seeds: transferred and rule-based schedules)" if r.seeded else ""
    print(f"{r.trials_run} trials{seeds} in {r.seconds:.1f} s{per100}; {r.skipped} task(s) "
          f"already tuned; {r.records_added} records added to {r.log_dir}")
    if est is not None:
        print(f"estimated end-to-end kernel time: {est:.3f} ms")
    if r.stopped:
        print(f"stopped early ({r.stopped}): every record measured so far is kept; "
              "re-run the same command to continue")
        return 130 if r.stopped == "interrupted" else 0
    if select is not None:
        _select_in_model(args, select, r.log_dir, log)
    return 0


def _select_in_model(args, candidates: int, log_dir: Path, log) -> None:
    from ..tuning.selection import select_in_model  # noqa: PLC0415

    s = select_in_model(args.model, target=args.target, log_dir=log_dir, candidates=candidates,
                        input_shapes=dict(args.input_shape), quantize=_quantization(args),
                        on_progress=log)
    if s.kept is None:
        print(f"in-model selection: nothing to choose (one record per kernel in {log_dir})")
        return

    def us(times) -> str:  # inf: not seen in the model's run (merged into another kernel)
        return " ".join(f"{t:7.1f}" if t != float("inf") else "    n/a" for t in times)

    width = max([len(k.name) for k in s.kernels] + [6])
    print(f"{'kernel':<{width}}  alone (us, by rank)       in the model (us, by rank)  chosen")
    for k in s.kernels:
        alone, inside = us(k.isolated_us), us(k.in_model_us)
        print(f"{k.name:<{width}}  {alone:<24}  {inside:<26}  {k.chosen + 1}")
    e2e = ", ".join(f"{label} {ms:.3f} ms" for label, ms in s.end_to_end_ms.items())
    print(f"end to end: {e2e}; the log keeps {s.kept}'s records ({s.changed} kernel(s) not on "
          f"their fastest-alone record; {s.dropped} records dropped)")
