"""Tuning logs: a directory per target holding a MetaSchedule JSON database keyed by workload
(``workloads.json`` + ``records.json``) and ``meta.json`` naming the target it was tuned for.

Records are keyed by the kernel's structure, not by model, so any model with the same layer
shapes reuses them. ``tuning_logs/<target>/`` in the project holds the shipped logs (small JSON,
committed); ``edgecc compile`` applies them automatically, plus any ``--tuning-log DIR``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import TuningLogError
from .targets import ROOT, Target

WORKLOADS = "workloads.json"
RECORDS = "records.json"
META = "meta.json"


def shipped_log_dir(target: Target) -> Path:
    return ROOT / "tuning_logs" / target.name


def _meta(target: Target, tvm_version: str) -> dict[str, Any]:
    return {"format": "edgecc-tuning-log", "target": target.name,
            "tvm_target": target.target_json(), "tvm_version": tvm_version}


def check_log(directory: Path, target: Target) -> dict[str, Any]:
    """The log's meta; refuses a log made for another target or one that is not a log."""
    meta_path = directory / META
    if not directory.is_dir():
        raise TuningLogError(f"tuning log '{directory}' does not exist")
    if not meta_path.is_file():
        raise TuningLogError(f"'{directory}' is not an edgecc tuning log (no {META})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise TuningLogError(f"{meta_path}: not valid JSON ({e})") from None
    if meta.get("format") != "edgecc-tuning-log":
        raise TuningLogError(f"'{directory}' is not an edgecc tuning log")
    if meta.get("tvm_target") != target.target_json():
        raise TuningLogError(
            f"tuning log '{directory}' was tuned for target {meta.get('target')!r} "
            f"({json.dumps(meta.get('tvm_target'))}); it does not match target {target.name!r} "
            f"({json.dumps(target.target_json())}). Tune for this target with 'edgecc tune'")
    return meta


def ensure_log(directory: Path, target: Target, tvm_version: str) -> None:
    """Create an empty log for ``target`` (or check an existing one matches it)."""
    if (directory / META).exists():
        check_log(directory, target)
        return
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META).write_text(json.dumps(_meta(target, tvm_version), indent=2) + "\n")


def open_database(directory: Path):
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    return ms.database.JSONDatabase(path_workload=str(directory / WORKLOADS),
                                    path_tuning_record=str(directory / RECORDS),
                                    allow_missing=True)


def logs_for_compile(target: Target, extra: tuple[Path, ...], *,
                     use_shipped: bool) -> list[Path]:
    """The logs a compile applies: the shipped one for the target (if any) then ``extra``."""
    logs = []
    shipped = shipped_log_dir(target)
    if use_shipped and (shipped / META).is_file():
        check_log(shipped, target)
        logs.append(shipped)
    for d in extra:
        check_log(Path(d), target)
        logs.append(Path(d))
    return logs


def fingerprint(logs: list[Path]) -> str:
    """A hash of the logs' contents, part of the compile cache key."""
    h = hashlib.sha256()
    for d in logs:
        for name in (WORKLOADS, RECORDS):
            p = d / name
            h.update(name.encode())
            h.update(p.read_bytes() if p.is_file() else b"")
    return h.hexdigest()


def union_database(logs: list[Path]):
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    dbs = [open_database(d) for d in logs]
    if not dbs:
        return None
    return dbs[0] if len(dbs) == 1 else ms.database.UnionDatabase(*dbs)
