"""Is the library an artifact names the one it was built with, for this runtime? Checked by
both loaders (this module and ``deploy/native/edgecc_run.cc``) before anything is loaded:

- its size, on every load (a stat; a truncated copy would otherwise die of SIGBUS in dlopen);
- its sha256 on first use, then again only when the file changed (a stamp beside the library,
  ``.<library>.verified``, records the hash with the file's size, mtime and inode; the native
  loader reads and writes the same stamps), or always when asked (``verify=True``,
  ``--verify``): hashing 100 MB costs about a second on a Pi 4;
- the TVM runtime it was built for (the manifest's ``tvm_version``): the same major.minor as
  the runtime that loads it.
No TVM imports here."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .._util import atomic_write_text
from ..errors import ArtifactError
from .manifest import Manifest, Variant


def stamp_path(library: Path) -> Path:
    return library.with_name(f".{library.name}.verified")


def _stat_key(st: os.stat_result) -> str:
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def runtime_series(version: str) -> str:
    """``0.27`` of ``0.27.0.post1``: artifacts run on a runtime of the same series."""
    return ".".join(version.split(".")[:2])


def check_runtime(manifest: Manifest, runtime_version: str, *, source: str) -> None:
    """Refuse an artifact built for another TVM runtime than ``runtime_version``."""
    built = manifest.tvm_version
    if built and runtime_version and runtime_series(built) != runtime_series(runtime_version):
        raise ArtifactError(f"{source} was built for TVM runtime {built}; this runtime is "
                            f"{runtime_version}: recompile it with this edgecc")


def check_library(directory: Path, build: Variant, *, verify: bool = False,
                  source: str | None = None) -> Path:
    """The path of ``build``'s library in ``directory``, checked as the module docstring says;
    an :class:`ArtifactError` naming the file otherwise."""
    where = source or str(directory)
    lib = Path(directory) / build.library
    try:
        st = lib.stat()
    except FileNotFoundError:
        raise ArtifactError(f"{where}: {build.library} is missing") from None
    if build.library_bytes and st.st_size != build.library_bytes:
        raise ArtifactError(f"{where}: {build.library} is {st.st_size} bytes, the manifest says "
                            f"{build.library_bytes} (a truncated or replaced copy): copy the "
                            "artifact again")
    if not build.library_sha256:
        return lib
    stamp = stamp_path(lib)
    expected = f"{build.library_sha256} {_stat_key(st)}"
    if not verify:
        try:
            if stamp.read_text().strip() == expected:
                return lib
        except OSError:
            pass
    if _sha256(lib) != build.library_sha256:
        raise ArtifactError(f"{where}: {build.library} does not match the sha256 in the "
                            "manifest (a corrupted or replaced copy): copy the artifact again")
    try:  # a read-only artifact is hashed on every load instead
        atomic_write_text(stamp, expected + "\n")
    except OSError:
        pass
    return lib
