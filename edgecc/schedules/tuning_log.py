"""Tuning logs: a directory per target holding a MetaSchedule JSON database keyed by workload
(``workloads.json`` + ``records.json``) and ``meta.json`` naming the target it was tuned for.

Records are keyed by the kernel's structure, not by model, so any model with the same layer
shapes reuses them. ``edgecc/tuning_logs/<target>/`` (package data) holds the shipped logs (small
JSON, committed); ``edgecc compile`` applies them automatically, plus any ``--tuning-log DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .._util import atomic_write_text, read_json
from ..errors import TuningLogError
from .rule_tiling import RULE_VERSION
from .trace import workload_key
from ..targets import DATA, Target

WORKLOADS = "workloads.json"
RECORDS = "records.json"
META = "meta.json"


def shipped_root() -> Path:
    """Where the shipped logs live: ``$EDGECC_TUNING_LOGS`` (a team's own log library, laid out
    like the package's: ``<target>/<name>/``) or the package's ``edgecc/tuning_logs/``."""
    env = os.environ.get("EDGECC_TUNING_LOGS")
    return Path(env) if env else DATA / "tuning_logs"


def shipped_log_dir(target: Target) -> Path:
    return shipped_root() / target.name


def user_root() -> Path:
    """The user's own log library, where ``edgecc tune`` writes by default (never into the
    installed package): ``$EDGECC_USER_TUNING_LOGS``, else ``$XDG_DATA_HOME/edgecc/tuning_logs``
    (``~/.local/share/edgecc/tuning_logs``), laid out like the shipped logs. A compile applies
    it like the shipped logs."""
    if os.environ.get("EDGECC_USER_TUNING_LOGS"):
        return Path(os.environ["EDGECC_USER_TUNING_LOGS"])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "edgecc" / "tuning_logs"


def user_log_dir(target: Target) -> Path:
    """``edgecc tune``'s default log for ``target``."""
    return user_root() / target.name


# how a log's candidates are timed (meta.json "measured"); logs older than the key are warm
COLD, WARM = "cold", "warm"
MEASURED = {
    COLD: "caches flushed before every run but for the kernel's input: weights and output come "
          "from memory, as inside a model",
    WARM: "repeated runs on the same buffers: weights stay in cache",
}


def _meta(target: Target, tvm_version: str, measured: str) -> dict[str, Any]:
    return {"format": "edgecc-tuning-log", "target": target.name,
            "tvm_target": target.target_json(), "tvm_version": tvm_version,
            "measured": measured}


def check_log(directory: Path, target: Target) -> dict[str, Any]:
    """The log's meta; refuses a log made for another target or one that is not a log."""
    meta_path = directory / META
    if not directory.is_dir():
        raise TuningLogError(f"tuning log '{directory}' does not exist")
    if not meta_path.is_file():
        raise TuningLogError(f"'{directory}' is not an edgecc tuning log (no {META})")
    meta = read_json(meta_path, TuningLogError)
    if meta.get("format") != "edgecc-tuning-log":
        raise TuningLogError(f"'{directory}' is not an edgecc tuning log")
    if meta.get("tvm_target") != target.target_json():
        raise TuningLogError(
            f"tuning log '{directory}' was tuned for target {meta.get('target')!r} "
            f"({json.dumps(meta.get('tvm_target'))}); it does not match target {target.name!r} "
            f"({json.dumps(target.target_json())}). Tune for this target with 'edgecc tune'")
    return meta


def ensure_log(directory: Path, target: Target, tvm_version: str, *,
               measured: str = COLD) -> None:
    """Create an empty log for ``target`` (or check an existing one matches it)."""
    if (directory / META).exists():
        check_log(directory, target)
        return
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META).write_text(json.dumps(_meta(target, tvm_version, measured), indent=2)
                                  + "\n")


def measured(directory: Path) -> str:
    """How the log's records were timed: :data:`COLD` or :data:`WARM` (see :data:`MEASURED`)."""
    return read_json(directory / META, TuningLogError).get("measured", WARM)


def measurement_for(directory: Path, cache_flush: bool | None) -> str:
    """How a tuning run times its candidates into the log ``directory``: an existing log keeps
    its own way (records timed another way would not compare with its records); for a new log
    ``cache_flush`` chooses (True or None: :data:`COLD`, False: :data:`WARM`)."""
    asked = None if cache_flush is None else COLD if cache_flush else WARM
    if not (directory / META).is_file():
        return asked or COLD
    mode = measured(directory)
    if asked not in (None, mode):
        flag = "--cache-flush" if asked == COLD else "--no-cache-flush"
        raise TuningLogError(
            f"tuning log '{directory}' was timed {mode} ({MEASURED[mode]}); {flag} would add "
            f"{asked} timings that do not compare with them: tune into a new --log-dir, or "
            f"drop {flag} to resume it as it was timed")
    return mode


def open_database(directory: Path):
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    return ms.database.JSONDatabase(path_workload=str(directory / WORKLOADS),
                                    path_tuning_record=str(directory / RECORDS),
                                    allow_missing=True)


def _logs_under(root: Path) -> list[Path]:
    """``root`` itself and each of its subdirectories that is a log."""
    if not root.is_dir():
        return []
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    return [d for d in candidates if (d / META).is_file()]


def shipped_logs(target: Target) -> list[Path]:
    """The logs in effect by default for ``target``: the shipped ``tuning_logs/<target>/``
    ones, then the user's (:func:`user_root`)."""
    shipped = _logs_under(shipped_log_dir(target))
    seen = {d.resolve() for d in shipped}
    return shipped + [d for d in _logs_under(user_log_dir(target)) if d.resolve() not in seen]


def logs_for_compile(target: Target, extra: tuple[Path, ...], *,
                     use_shipped: bool) -> list[Path]:
    """The logs a compile applies: the shipped ones for the target, then ``extra``."""
    logs = []
    for d in shipped_logs(target) if use_shipped else []:
        check_log(d, target)
        logs.append(d)
    for d in extra:
        check_log(Path(d), target)
        logs.append(Path(d))
    return logs


def donor_logs(target: Target, *, use_shipped: bool) -> list[Path]:
    """Shipped logs of the *other* CPU targets: transfer-tuning donors when this target's own
    logs have no similar kernel (their traces fit any CPU; their tile sizes were measured
    elsewhere, so they rank behind this target's records)."""
    from ..targets import list_targets  # noqa: PLC0415

    if not use_shipped or target.is_gpu:
        return []
    return [d for other in list_targets()
            if other.name != target.name and not other.is_gpu
            for d in shipped_logs(other)]


def fingerprint(logs: list[Path]) -> str:
    """A hash of the logs' contents, part of the compile cache key."""
    h = hashlib.sha256()
    for d in logs:
        for name in (WORKLOADS, RECORDS):
            p = d / name
            h.update(name.encode())
            h.update(p.read_bytes() if p.is_file() else b"")
    return h.hexdigest()


def _complete_lines(path: Path) -> list[str]:
    """The file's complete lines: a line still being appended by a running tune (no newline
    yet) is left out."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line for line in text.split("\n")[:-1] if line.strip()]


def _parse_record(line: str) -> tuple[int, float] | None:
    """(workload index, mean seconds; inf for a failed measurement) of a records.json line, or
    None when the line is not a record."""
    try:
        rec = json.loads(line)
        if not (isinstance(rec, list) and len(rec) == 2):
            return None
        secs = [float(v) for v in (rec[1][1] or [])]
        return int(rec[0]), sum(secs) / len(secs) if secs else float("inf")
    except (ValueError, TypeError, IndexError):
        return None


def _workload_line_key(line: str) -> str:
    """:func:`workload_key` of a workloads.json line (its structural hash, as hex)."""
    return f"0x{int(json.loads(line)[0]) % 2**64:016x}"


def snapshot(directory: Path, dest: Path) -> None:
    """Copy a consistent view of the log in ``directory`` to ``dest``, even while ``edgecc tune``
    appends to it. Records are read first, then workloads: the database writes a workload before
    any record of it, and compaction replaces only the records file (atomically), so every
    complete record read refers to a workload that is already in the workloads file."""
    records = _complete_lines(directory / RECORDS)
    workloads = _complete_lines(directory / WORKLOADS)
    kept = [line for line in records
            if (rec := _parse_record(line)) is not None and 0 <= rec[0] < len(workloads)]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / WORKLOADS).write_text("".join(line + "\n" for line in workloads))
    (dest / RECORDS).write_text("".join(line + "\n" for line in kept))


def read_records(logs: list[Path]) -> list:
    """Every tuning record in ``logs``, in order (each log read through :func:`snapshot`, so a
    log that a running tune is writing can be read)."""
    import tempfile  # noqa: PLC0415

    out = []
    for d in logs:
        with tempfile.TemporaryDirectory(prefix="edgecc-log-") as tmp:
            snapshot(d, Path(tmp))
            out.extend(open_database(Path(tmp)).get_all_tuning_records())
    return out


def comparable_records(logs: list[Path]) -> list:
    """The records of ``logs`` a compile chooses from: all of them, except that a workload with
    records in a log timed cold keeps only those (cold and warm times do not compare, a warm
    one looks faster than the kernel runs in the model, and a cold one is the closer to it).
    Among what is left, the fastest record of each workload wins."""
    per_log = [(measured(d), read_records([d])) for d in logs]
    if len({mode for mode, _ in per_log}) < 2:  # one way of timing: every time compares
        return [r for _, recs in per_log for r in recs]
    cold = {workload_key(r.workload.mod) for mode, recs in per_log if mode == COLD for r in recs}
    return [r for mode, recs in per_log for r in recs
            if mode == COLD or workload_key(r.workload.mod) not in cold]


def memory_database(records: list):
    """An in-memory database of ``records`` (keyed by workload; a query returns the fastest
    record across all the logs they came from), or None when there are none."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    if not records:
        return None
    db = ms.database.MemoryDatabase()
    for rec in records:
        workload = db.commit_workload(rec.workload.mod)
        db.commit_tuning_record(ms.database.TuningRecord(rec.trace, workload, rec.run_secs,
                                                         rec.target, rec.args_info))
    return db


def spent(directory: Path) -> dict[str, int]:
    """Trials spent per workload (kept in meta.json: compaction drops records, not history)."""
    meta = json.loads((directory / META).read_text())
    return {k: int(v) for k, v in meta.get("spent", {}).items()}


def _update_meta(directory: Path, change) -> None:
    """Apply ``change(meta)`` to ``meta.json`` and replace the file atomically."""
    meta_path = directory / META
    meta = json.loads(meta_path.read_text())
    change(meta)
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")


def record_spent(directory: Path, counts: dict[str, int]) -> None:
    def change(meta):
        merged = meta.get("spent", {})
        for key, n in counts.items():
            merged[key] = max(int(merged.get(key, 0)), int(n))
        meta["spent"] = dict(sorted(merged.items()))

    _update_meta(directory, change)


# seed kind -> meta.json key (rule seeds per version of the rule: a new rule is measured again)
SEED_KINDS = {"transfer": "seeded", "rule": f"rule_seeded_v{RULE_VERSION}"}


def seeded(directory: Path, kind: str = "transfer") -> set[str]:
    """Workloads whose tuning was already seeded in this log with transferred schedules
    (``kind="transfer"``) or with the rule-based default schedule (``"rule"``)."""
    return set(read_json(directory / META, TuningLogError).get(SEED_KINDS[kind], []))


def record_seeded(directory: Path, keys: list[str], kind: str = "transfer") -> None:
    field = SEED_KINDS[kind]
    _update_meta(directory, lambda meta: meta.update(
        {field: sorted(set(meta.get(field, [])) | set(keys))}))


def _records_by_index(directory: Path) -> tuple[list[str], dict[int, list[tuple[float, int, str]]]]:
    """The log's workload lines, and its record lines grouped by workload index as
    (mean seconds, position in the file, line), fastest first."""
    workloads = _complete_lines(directory / WORKLOADS)
    by_index: dict[int, list[tuple[float, int, str]]] = {}
    for pos, line in enumerate(_complete_lines(directory / RECORDS)):
        rec = _parse_record(line)
        if rec is not None and 0 <= rec[0] < len(workloads):
            by_index.setdefault(rec[0], []).append((rec[1], pos, line))
    return workloads, {i: sorted(v) for i, v in by_index.items()}


def _write_records(directory: Path, lines: list[str]) -> None:
    """Replace the records file atomically (a reader sees the old records or the new ones)."""
    atomic_write_text(directory / RECORDS, "".join(line + "\n" for line in lines))


def compact(directory: Path, *, keep: int = 1) -> tuple[int, int]:
    """Keep only the ``keep`` fastest records per workload (what a shipped log needs);
    returns (records before, records after). Trial counts survive in meta.json.

    Works on the files' lines: the workloads file is left as it is (records keep their indices
    into it) and the records file is replaced atomically, so a compile reading the log meanwhile
    (:func:`snapshot`) sees either the old records or the new ones."""
    if keep < 1:
        raise TuningLogError("--keep-best must be at least 1")
    workloads, by_index = _records_by_index(directory)
    before = sum(len(v) for v in by_index.values())
    record_spent(directory, {_workload_line_key(workloads[i]): len(v)
                             for i, v in by_index.items()})
    best = [(pos, line) for entries in by_index.values()
            for secs, pos, line in entries[:keep] if secs != float("inf")]
    out = [line for _, line in sorted(best)]
    _write_records(directory, out)
    return before, len(out)


def ranked_records(directory: Path, depth: int) -> dict[str, list[tuple[float, str]]]:
    """Per workload key, its ``depth`` fastest measured records as (mean seconds, record line),
    fastest first (failed measurements left out)."""
    workloads, by_index = _records_by_index(directory)
    out = {}
    for i, entries in by_index.items():
        ok = [(secs, line) for secs, _, line in entries if secs != float("inf")][:depth]
        if ok:
            out[_workload_line_key(workloads[i])] = ok
    return out


def write_candidate_log(directory: Path, dest: Path, pick: dict[str, str]) -> None:
    """A log in ``dest`` with ``directory``'s meta and workloads and only the record lines in
    ``pick`` (one per workload key)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (META, WORKLOADS):
        (dest / name).write_text((directory / name).read_text())
    _write_records(dest, list(pick.values()))


def holdout_log(directory: Path, dest: Path, drop: set[str]) -> int:
    """A copy of the log in ``directory`` at ``dest`` without the records of the workloads whose
    key is in ``drop`` (a model's own kernels: a leave-one-out figure must not use them);
    returns how many records were left out."""
    workloads, by_index = _records_by_index(directory)
    kept, dropped = {}, 0
    for i, recs in sorted(by_index.items()):
        if _workload_line_key(workloads[i]) in drop:
            dropped += len(recs)
        else:
            kept.update((f"{i}:{pos}", line) for _, pos, line in sorted(recs, key=lambda r: r[1]))
    write_candidate_log(directory, dest, kept)
    return dropped


def keep_chosen(directory: Path, chosen: dict[str, str]) -> int:
    """For each workload key in ``chosen``, keep only its chosen record line (other workloads'
    records are left as they are); returns how many records were dropped. Trial counts
    survive in meta.json."""
    workloads, by_index = _records_by_index(directory)
    keys = {i: _workload_line_key(w) for i, w in enumerate(workloads)}
    record_spent(directory, {keys[i]: len(v) for i, v in by_index.items()})
    kept = [(pos, line) for i, entries in by_index.items() for _, pos, line in entries
            if keys[i] not in chosen or line == chosen[keys[i]]]
    _write_records(directory, [line for _, line in sorted(kept)])
    return sum(len(v) for v in by_index.values()) - len(kept)
