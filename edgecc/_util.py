"""Small helpers shared by several stages (no TVM imports here)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputExistsError

StageCallback = Callable[[str, float], None]


def read_json(path: Path, error: type[Exception]):
    """Parse a JSON file; a syntax error becomes ``error`` naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def stage(name: str, on_stage: StageCallback | None) -> Iterator[None]:
    """Time a stage and report it to ``on_stage(name, seconds)`` when it finishes."""
    start = time.perf_counter()
    yield
    if on_stage is not None:
        on_stage(name, time.perf_counter() - start)


def check_output_dir(path: Path, *, force: bool) -> None:
    if path.exists() and not force:
        raise OutputExistsError(f"output '{path}' already exists (use --force to replace it)")


@contextmanager
def atomic_dir(final: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it replaces ``final``.

    On any exception the temporary directory is removed and ``final`` is left as it was,
    so a failed step never leaves a half-written output behind.
    """
    final = Path(final)
    check_output_dir(final, force=force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
