"""Compile cache ("model caching"): artifacts keyed by model bytes + target + options + versions.

Entries live under ``$EDGECC_CACHE_DIR`` (default ``$XDG_CACHE_HOME/edgecc`` or
``~/.cache/edgecc``), one directory per key. An entry is trusted only if its manifest parses and
its library's sha256 matches the manifest; otherwise it is removed and the model is rebuilt.
Nothing here imports TVM, so a cache hit costs a file hash and a copy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from .._util import atomic_dir, sha256_file
from ..errors import ArtifactError
from ..artifact.manifest import Manifest


def cache_root() -> Path:
    if os.environ.get("EDGECC_CACHE_DIR"):
        return Path(os.environ["EDGECC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgecc"


def tvm_version() -> str:
    try:
        return metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:  # a source build of TVM
        import tvm  # noqa: PLC0415

        return tvm.__version__


@functools.cache
def source_digest() -> str:
    """A hash of edgecc's own Python sources (computed once per process, about 1 ms). Part of
    the cache key: a changed pass changes the artifact a model compiles to, and a version number
    is not bumped for every such change (an edited checkout, a development install)."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]  # edgecc/
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(*, model_sha256: str, target: dict[str, Any], options: dict[str, Any],
              edgecc_version: str) -> str:
    blob = json.dumps({"model": model_sha256, "target": target, "options": options,
                       "tvm": tvm_version(), "edgecc": edgecc_version,
                       "edgecc_sources": source_digest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def entry_dir(key: str) -> Path:
    return cache_root() / key[:2] / key


def validate_artifact(directory: Path) -> Manifest:
    """Check that the manifest parses and every file it names is present and intact."""
    m = Manifest.read(directory)
    for b in m.builds():
        lib = directory / b.library
        if not lib.is_file():
            raise ArtifactError(f"{directory}: {b.library} is missing")
        if b.library_bytes and lib.stat().st_size != b.library_bytes:
            raise ArtifactError(f"{directory}: {b.library} is {lib.stat().st_size} bytes, the "
                                f"manifest says {b.library_bytes}")
        if b.library_sha256 and sha256_file(lib) != b.library_sha256:
            raise ArtifactError(f"{directory}: {b.library} does not match the sha256 in the "
                                "manifest")
    return m


def lookup(key: str) -> tuple[Path | None, str | None]:
    """(entry, None) on a valid hit, (None, None) on a miss, (None, reason) when the entry was
    corrupt (it is removed)."""
    d = entry_dir(key)
    if not d.exists():
        return None, None
    try:
        validate_artifact(d)
    except ArtifactError as e:
        shutil.rmtree(d, ignore_errors=True)
        return None, str(e)
    return d, None


def store(key: str, artifact: Path) -> None:
    d = entry_dir(key)
    try:
        with atomic_dir(d, force=True) as tmp:
            for f in artifact.iterdir():
                shutil.copy2(f, tmp / f.name)
    except OSError:
        pass  # a read-only or full cache must not fail a compile that succeeded


def copy_out(entry: Path, output: Path, *, force: bool) -> None:
    with atomic_dir(output, force=force) as tmp:
        for f in entry.iterdir():
            shutil.copy2(f, tmp / f.name)
