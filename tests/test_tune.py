"""Tuning: records, resume, applying logs at compile, refusing logs of another target, RPC."""

import json
import re

import pytest
from conftest import make_conv_model, ort_run, rel_err

import edgecc
from edgecc import EdgeccError, TuningLogError
from edgecc.schedules import tuning_log
from edgecc.cli import main
from edgecc.runtime import load, random_inputs
from edgecc.tuning.tune import parse_duration, tune_model

pytestmark = pytest.mark.slow

KERNELS = 3  # make_conv_model: transpose to NHWC, conv + bias + relu, transpose back


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    work = tmp_path_factory.mktemp("tune")
    model = make_conv_model(bn=False)
    lines = []
    result = tune_model(model, target="x86_64", trials_per_task=4, log_dir=work / "log",
                        on_progress=lines.append)
    return work, model, result, lines


def _conv_task(result):
    (conv,) = [t for t in result.tasks if t.name.startswith("fused_conv2d")]
    return conv


def test_tuning_writes_records_and_reports_progress(tuned):
    work, _, result, lines = tuned
    assert result.stopped is None
    # the conv, and the transposes into and out of channels-last (KERNELS of them)
    assert len(result.tasks) == KERNELS and _conv_task(result).best_us is not None
    assert result.trials_run + result.seeded >= 4 and result.records_added >= 1
    assert result.estimate_ms() > 0
    meta = json.loads((work / "log" / "meta.json").read_text())
    assert meta["target"] == "x86_64" and meta["tvm_target"]["mcpu"] == "x86-64-v3"
    assert meta["measured"] == "cold" and result.measured == "cold"  # a new log: cache flushed
    assert lines[0].startswith("[tune] tinyconv for x86_64 (")
    assert any("trials" in ln and "ETA" in ln and "end-to-end est." in ln for ln in lines[1:])
    # the conv's search starts from the rule-tiled schedule (measured once, as a seed); the
    # transposes have no anchor for the rule
    seeding = re.compile(r"\[tune\] seeding: measuring \d+ schedule\(s\) transferred from "
                         r"similar tuned kernels and 1 rule-based default schedule\(s\) for "
                         r"\d+ task\(s\)")
    assert any(seeding.fullmatch(ln) for ln in lines)
    assert len(tuning_log.seeded(work / "log", "rule")) == KERNELS


def test_resume_skips_tasks_whose_budget_is_spent(tuned):
    work, model, _, _ = tuned
    again = tune_model(model, target="x86_64", trials_per_task=4, log_dir=work / "log",
                       on_progress=None)
    assert again.trials_run == 0 and again.skipped == KERNELS and again.records_added == 0


def test_compile_applies_the_log_and_stays_exact(tuned, tmp_path, capsys):
    work, model, _, _ = tuned
    r = edgecc.compile(model, output=tmp_path / "a", tuning_logs=[work / "log"],
                       use_shipped_logs=False)
    assert r.kernels == (KERNELS, KERNELS)
    feed = random_inputs(r.manifest.inputs)
    assert rel_err(load(tmp_path / "a").run(feed)["y"], ort_run(model, feed)[0]) <= 1e-4
    untuned = edgecc.compile(model, output=tmp_path / "b", use_shipped_logs=False)
    assert untuned.kernels == (0, KERNELS)
    import onnx

    onnx.save(model, tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "c"), "-q",
                 "--tuning-log", str(work / "log"), "--no-shipped-logs"]) == 0
    assert (f"kernels: {KERNELS} tuned, 0 rule-tiled, 0 transferred from similar kernels, "
            "0 default schedule "
            "(logs: ") in capsys.readouterr().out


def test_log_for_another_target_is_refused(tuned, tmp_path):
    work, model, _, _ = tuned
    with pytest.raises(TuningLogError) as e:
        edgecc.compile(model, target="x86_64-avx512", output=tmp_path / "a",
                       tuning_logs=[work / "log"])
    assert str(e.value).startswith(f"tuning log '{work / 'log'}' was tuned for target 'x86_64'")
    assert "it does not match target 'x86_64-avx512'" in str(e.value)
    with pytest.raises(TuningLogError, match="is not an edgecc tuning log"):
        edgecc.compile(model, output=tmp_path / "b", tuning_logs=[tmp_path])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_durations():
    assert parse_duration("90") == 90 and parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400 and parse_duration("45s") == 45
    for bad in ("soon", "-3m", "0"):
        with pytest.raises(EdgeccError, match="bad duration"):
            parse_duration(bad)


def test_time_budget_stops_and_keeps_records(tmp_path):
    result = tune_model(make_conv_model(bn=False, cout=16), trials_per_task=512,
                        time_budget_s=1.0, log_dir=tmp_path / "log", on_progress=None)
    assert result.stopped == "time budget"
    assert 0 < result.trials_run < 512 and result.records_added >= 1


def test_tune_over_rpc_loopback(tmp_path, capsys):
    from rpc_util import HOST, rpc_cluster

    import onnx

    onnx.save(make_conv_model(bn=False, cout=4), tmp_path / "m.onnx")
    with rpc_cluster(["tune-cpu"]) as port:
        rc = main(["tune", str(tmp_path / "m.onnx"), "--trials", "2", "--log-dir",
                   str(tmp_path / "log"), "--rpc-tracker", f"{HOST}:{port}", "--rpc-key",
                   "tune-cpu", "--num-cores", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "RPC tune-cpu" in captured.err and "records added to" in captured.out
    r = edgecc.compile(tmp_path / "m.onnx", output=tmp_path / "a",
                       tuning_logs=[tmp_path / "log"], use_shipped_logs=False)
    assert r.kernels == (KERNELS, KERNELS)


def test_compacted_log_still_applies_and_resumes(tuned, tmp_path):
    import shutil

    work, model, result, _ = tuned
    log = tmp_path / "log"
    shutil.copytree(work / "log", log)
    before, after = tuning_log.compact(log, keep=1)
    assert before >= 4 and after == KERNELS
    assert sum(tuning_log.spent(log).values()) >= 4  # trial history survives compaction
    again = tune_model(model, trials_per_task=4, log_dir=log, on_progress=None)
    assert again.trials_run == 0 and again.skipped == KERNELS
    r = edgecc.compile(model, output=tmp_path / "a", tuning_logs=[log], use_shipped_logs=False)
    assert r.kernels == (KERNELS, KERNELS)


def test_a_log_is_resumed_the_way_it_was_timed(tuned, tmp_path, capsys):
    """Records timed with flushed caches and warm ones do not compare: a log keeps the way it
    was timed, asking for the other one is refused before anything runs, and a log older than
    the choice (no "measured" in meta.json) was timed warm and resumes warm."""
    import shutil

    import onnx

    work, model, _, _ = tuned
    log = tmp_path / "log"
    shutil.copytree(work / "log", log)
    onnx.save(model, tmp_path / "m.onnx")
    assert main(["tune", str(tmp_path / "m.onnx"), "--trials", "4", "--log-dir", str(log),
                 "--no-cache-flush"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: tuning log '{log}' was timed cold (caches flushed before every run but for "
        "the kernel's input: weights and output come from memory, as inside a model); "
        "--no-cache-flush would add warm timings that do not compare with them: tune into a "
        "new --log-dir, or drop --no-cache-flush to resume it as it was timed")
    assert tune_model(model, trials_per_task=4, log_dir=log, on_progress=None,
                      cache_flush=True).measured == "cold"
    meta = json.loads((log / "meta.json").read_text())
    del meta["measured"]
    (log / "meta.json").write_text(json.dumps(meta))
    assert tuning_log.measured(log) == "warm"
    assert tune_model(model, trials_per_task=4, log_dir=log, on_progress=None).measured == "warm"
    with pytest.raises(TuningLogError, match="--cache-flush would add cold timings"):
        tune_model(model, trials_per_task=4, log_dir=log, on_progress=None, cache_flush=True)
    assert tuning_log.measurement_for(tmp_path / "new", False) == "warm"
    assert tuning_log.measurement_for(tmp_path / "new", None) == "cold"


def test_compile_prefers_cold_records_to_warm_ones_that_only_look_faster(tuned, tmp_path):
    """A warm time is not comparable with a cold one (it looks faster than the kernel runs in
    a model): where a workload has records in a cold log, the warm logs' records of it are left
    out of the compile's choice; workloads only warm logs have keep their records."""
    import shutil

    work, model, _, _ = tuned
    cold = work / "log"
    warm = tmp_path / "warm"
    shutil.copytree(cold, warm)
    meta = json.loads((warm / "meta.json").read_text())
    meta["measured"] = "warm"
    (warm / "meta.json").write_text(json.dumps(meta))
    recs = [json.loads(line) for line in (warm / "records.json").read_text().splitlines()]
    for rec in recs:  # the warm copies look 1000x faster
        rec[1][1] = [t / 1000 for t in rec[1][1]]
    (warm / "records.json").write_text("".join(json.dumps(r) + "\n" for r in recs))
    n_cold = len(tuning_log.read_records([cold]))
    chosen = tuning_log.comparable_records([warm, cold])
    assert len(chosen) == n_cold
    assert min(sum(r.run_secs) for r in chosen) >= min(
        sum(r.run_secs) for r in tuning_log.read_records([cold]))
    assert len(tuning_log.comparable_records([warm])) == len(recs)  # warm alone: all kept
    digits = tuning_log.shipped_log_dir(edgecc.get_target("x86_64")) / "digits"
    n_digits = len(tuning_log.read_records([digits]))  # warm, other workloads: all kept
    assert len(tuning_log.comparable_records([digits, cold])) == n_cold + n_digits
    r = edgecc.compile(model, output=tmp_path / "a", tuning_logs=[warm, cold],
                       use_shipped_logs=False)
    assert r.kernels == (KERNELS, KERNELS)


def test_cold_timing_flushes_the_cache_before_every_single_run():
    from tvm.s_tir import meta_schedule as ms

    from edgecc.tuning.tune import _evaluator

    cold, warm = _evaluator(ms, "cold"), _evaluator(ms, "warm")
    assert (cold.number, cold.enable_cpu_cache_flush, cold.min_repeat_ms) == (1, True, 0)
    assert cold.repeat >= 10  # single runs: enough of them for a stable mean
    assert (warm.enable_cpu_cache_flush, warm.min_repeat_ms) == (False, 50)


def test_search_starts_from_transferred_schedules_once_per_log(tuned, tmp_path, monkeypatch):
    """A task with no record of its own first measures the schedules of the most similar tuned
    kernels (here the fixture's conv, 8 output channels, for a 16-channel one); the records
    count toward its budget, so at one trial per task no search runs at all."""
    work, _, _, _ = tuned
    library = tmp_path / "library"
    (library / "x86_64").mkdir(parents=True)
    (library / "x86_64" / "conv").symlink_to(work / "log")
    monkeypatch.setenv("EDGECC_TUNING_LOGS", str(library))
    model = make_conv_model(bn=False, cout=16)
    seeded = tune_model(model, trials_per_task=1, log_dir=tmp_path / "log", on_progress=None)
    # the conv is seeded (one trial of budget: no search for it); the transposes, which have
    # no similar tuned kernel, get their one search trial each
    assert seeded.seeded >= 1 and seeded.trials_run <= KERNELS - 1
    assert seeded.records_added == seeded.seeded + seeded.trials_run
    assert _conv_task(seeded).best_us is not None
    conv_keys = {tuning_log.workload_key(r.workload.mod) for r in
                 tuning_log.open_database(tmp_path / "log").get_all_tuning_records()
                 if "conv2d" in r.workload.mod.script()}
    assert len(conv_keys) == 1 and conv_keys <= tuning_log.seeded(tmp_path / "log")
    # resuming with a bigger budget searches; the task is not seeded again
    again = tune_model(model, trials_per_task=seeded.seeded + 2, log_dir=tmp_path / "log",
                       on_progress=None)
    assert again.seeded == 0 and again.trials_run >= 2
    r = edgecc.compile(model, output=tmp_path / "a", tuning_logs=[tmp_path / "log"],
                       use_shipped_logs=False)
    assert r.kernels == (KERNELS, KERNELS)
    feed = random_inputs(r.manifest.inputs)
    assert rel_err(load(tmp_path / "a").run(feed)["y"], ort_run(model, feed)[0]) <= 1e-4
    # without seeds, the same budget is all search trials
    plain = tune_model(model, trials_per_task=1, log_dir=tmp_path / "log2", on_progress=None,
                       transfer_seeds=False)
    assert plain.seeded == 0 and plain.trials_run == KERNELS
    assert tuning_log.seeded(tmp_path / "log2") == set()


def test_search_runs_from_seeds_of_a_donor_with_another_epilogue(tmp_path, monkeypatch):
    """A conv followed by a Sigmoid gets seeds from the digits convs (ReLU epilogues); the
    evolutionary search then mutates them (an anchor-only transfer once crashed it there, so
    seeds are whole-trace transfers only) and runs its own trials."""
    from conftest import DIGITS_LOG, conv_then

    library = tmp_path / "library"
    (library / "x86_64").mkdir(parents=True)
    (library / "x86_64" / "digits").symlink_to(DIGITS_LOG)
    monkeypatch.setenv("EDGECC_TUNING_LOGS", str(library))
    r = tune_model(conv_then("Sigmoid"), trials_per_task=5, log_dir=tmp_path / "log",
                   on_progress=None)
    assert r.seeded >= 1 and r.trials_run >= 1 and r.stopped is None
    assert r.records_added >= r.seeded + 1


def test_a_crashed_search_does_not_count_its_budget_as_spent(tmp_path, monkeypatch):
    from tvm.s_tir import meta_schedule as ms

    def crash(**_kwargs):
        raise RuntimeError("search crashed")

    monkeypatch.setattr(ms, "tune_tasks", crash)
    with pytest.raises(RuntimeError, match="search crashed"):
        tune_model(make_conv_model(bn=False), trials_per_task=4, log_dir=tmp_path / "log",
                   on_progress=None, transfer_seeds=False)
    assert tuning_log.spent(tmp_path / "log") and not any(
        n >= 4 for n in tuning_log.spent(tmp_path / "log").values())  # a re-run resumes


def test_shipped_logs_are_valid_for_their_target():
    from edgecc.targets import list_targets

    for target in list_targets():
        for log in tuning_log.shipped_logs(target):
            meta = tuning_log.check_log(log, target)
            assert (log / tuning_log.RECORDS).stat().st_size < 2 * 2**20
            assert meta["measured"] in tuning_log.MEASURED  # says how its records were timed


def test_ctrl_c_keeps_records_and_leaves_no_workers(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import onnx
    import psutil

    onnx.save(make_conv_model(bn=False, cout=16), tmp_path / "m.onnx")
    log = tmp_path / "log"
    proc = subprocess.Popen([sys.executable, "-m", "edgecc", "tune", str(tmp_path / "m.onnx"),
                             "--trials", "1000", "--log-dir", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        records = log / "records.json"
        if records.exists() and records.stat().st_size > 0:
            break
        time.sleep(0.5)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped early (interrupted): every record measured so far is kept" in out
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"worker processes left behind: {[p.pid for p in alive]}"
    assert len(tuning_log.open_database(log)) >= 1


def test_in_model_selection_keeps_one_of_each_kernels_best_records(tuned, tmp_path, capsys):
    """``tune --select-in-model K`` compiles the model with each kernel's 1st..Kth fastest
    record, times the kernels inside the model, and leaves the log with one of those records
    per kernel; the log still compiles to the exact result."""
    import shutil

    import onnx

    work, model, _, _ = tuned
    log = tmp_path / "log"
    shutil.copytree(work / "log", log)
    before = tuning_log.ranked_records(log, 3)
    assert max(len(v) for v in before.values()) >= 2  # something to choose between
    onnx.save(model, tmp_path / "m.onnx")
    assert main(["tune", str(tmp_path / "m.onnx"), "--trials", "4", "--log-dir", str(log),
                 "--select-in-model", "3", "-q"]) == 0
    out = capsys.readouterr().out
    assert "end to end: rank1 " in out and "the log keeps " in out
    after = tuning_log.ranked_records(log, 10)
    assert after.keys() == before.keys()
    for key, records in after.items():
        assert len(records) == 1 and records[0][1] in [line for _, line in before[key]]
    assert sum(tuning_log.spent(log).values()) >= 4  # trial history survives
    r = edgecc.compile(model, output=tmp_path / "a", tuning_logs=[log], use_shipped_logs=False)
    assert r.kernels == (KERNELS, KERNELS)
    feed = random_inputs(r.manifest.inputs)
    assert rel_err(load(tmp_path / "a").run(feed)["y"], ort_run(model, feed)[0]) <= 1e-4


def test_in_model_selection_is_refused_before_tuning_where_it_cannot_run(tmp_path, capsys):
    import onnx

    onnx.save(make_conv_model(bn=False), tmp_path / "m.onnx")
    assert main(["tune", str(tmp_path / "m.onnx"), "-t", "aarch64", "--log-dir",
                 str(tmp_path / "log"), "--select-in-model", "3"]) == 1
    err = capsys.readouterr().err
    assert "error: --select-in-model runs the model on this machine, which runs " in err
    assert err.rstrip().endswith("code, not aarch64; select on a machine of that target")
    assert not (tmp_path / "log").exists()
    assert main(["tune", str(tmp_path / "m.onnx"), "--select-in-model", "1"]) == 1
    assert "error: --select-in-model needs K >= 2" in capsys.readouterr().err


def test_tune_writes_to_the_users_log_library_which_compile_applies(tmp_path, capsys):
    """Without --log-dir the records go to the user's library, never into the installed
    package, and the next compile applies them."""
    import os
    from pathlib import Path

    import onnx

    onnx.save(make_conv_model(bn=False, cout=4), tmp_path / "m.onnx")
    package_log = Path(edgecc.__file__).parent / "tuning_logs" / "x86_64"
    package_files = sorted(p for p in package_log.rglob("*") if p.is_file())
    assert main(["tune", str(tmp_path / "m.onnx"), "--trials", "1", "--no-transfer-seeds"]) == 0
    user = Path(os.environ["EDGECC_USER_TUNING_LOGS"]) / "x86_64"
    assert str(user) in capsys.readouterr().out
    assert (user / "meta.json").is_file() and tuning_log.read_records([user])
    assert sorted(p for p in package_log.rglob("*") if p.is_file()) == package_files
    r = edgecc.compile(tmp_path / "m.onnx", output=tmp_path / "a", rule_schedule=False,
                       transfer_tuning=False, isa_variants=False)
    assert str(user) in r.manifest.options["tuning_logs"]
    assert r.kernels[0] >= 1
