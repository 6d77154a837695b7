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

from .errors import InputError, OutputExistsError

StageCallback = Callable[[str, float], None]


def read_json(path: Path, error: type[Exception]):
    """Parse a JSON file; a syntax error becomes ``error`` naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None


def read_npz(path: Path, *, what: str) -> dict:
    """All arrays of an ``.npz`` file by name; an unreadable file is an InputError naming
    ``what`` (e.g. "calibration data 'x.npz'")."""
    import numpy as np  # noqa: PLC0415

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001  (numpy raises several types for a bad file)
        raise InputError(f"cannot read {what} as .npz: {e}") from e


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a private temporary file beside it and a rename: a reader (or a
    crash) never sees a half-written file, and two writers never share the temporary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(part, path)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


_MACHINE_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def machine_arch(machine: str | None = None) -> str:
    """edgecc's name for a CPU architecture (``x86_64``, ``aarch64``), of this machine unless
    ``machine`` (a ``platform.machine()`` string) is given; other names are returned as they
    are."""
    import platform  # noqa: PLC0415

    m = (machine or platform.machine()).lower()
    return _MACHINE_ARCH.get(m, m)


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
