"""``edgecc package``: a self-contained bundle for the artifact's device — the model, the
native loader and the TVM runtime libraries for its CPU architecture; no Python needed there."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .._util import atomic_dir, check_output_dir, sha256_file
from ..build.cache import validate_artifact
from ..errors import ArtifactError, EdgeccError
from .native import (NATIVE_DIR, build_example, build_loader, runtime_api_library, runtime_libs,
                     toolchain)

RUN_SH = """#!/bin/sh
# Run this bundle: ./run.sh --input NAME=FILE.npy [--output DIR] [--bench N]
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/bin/edgecc-run" "$here" "$@"
"""

README = """edgecc bundle: {model} for {target} ({arch})

  ./run.sh --input {first}=input.npy --output outputs/ [--bench 50]

Files: model.so (compiled model, weights included), model.json (manifest: inputs, outputs,
target), bin/edgecc-run (native loader), lib/ (TVM runtime: libtvm_runtime.so, libtvm_ffi.so;
libedgecc_runtime.so, the C API), include/edgecc_runtime.h.{variants}
Needs only the C/C++ runtime of a Linux {arch} system (glibc 2.28+, libstdc++).

Embedding the model in an application: examples/run_model.c (built as bin/run_model) opens this
directory with edgecc_model_open, runs it on its own buffers, and times it:

  bin/run_model . input.bin --out output --bench 50      (raw little-endian tensors)
  cc -I include app.c -L lib -ledgecc_runtime -Wl,-rpath,'$ORIGIN/lib' -o app

inputs:  {inputs}
outputs: {outputs}
"""


@dataclass(frozen=True)
class BundleResult:
    path: Path
    files: tuple[tuple[str, int], ...]  # (relative path, bytes)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def format(self) -> str:
        width = max(len(n) for n, _ in self.files)
        rows = [f"  {n:<{width}}  {size / 1024:10.1f} KiB" for n, size in self.files]
        rows.append(f"  {'total':<{width}}  {self.total_bytes / 1024:10.1f} KiB "
                    f"({self.total_bytes / 2**20:.2f} MiB)")
        return "\n".join(rows)


def _strip(tool: str, path: Path, *, shared: bool) -> None:
    args = [tool, "--strip-unneeded", str(path)] if shared else [tool, str(path)]
    subprocess.run(args, check=True, capture_output=True)


def package_artifact(artifact: str | Path, output: str | Path, *, force: bool = False,
                     strip: bool = True, log=lambda _msg: None) -> BundleResult:
    """Write the bundle for ``artifact`` to ``output`` (a directory, or ``.tar.gz``)."""
    artifact, output = Path(artifact), Path(output)
    if not artifact.is_dir():
        raise ArtifactError(f"artifact directory '{artifact}' does not exist")
    manifest = validate_artifact(artifact)
    if manifest.device != "cpu":
        raise EdgeccError(f"artifact '{artifact}' targets {manifest.device}; the native loader "
                          "runs CPU artifacts only (use the Python runtime on the GPU device)")
    check_output_dir(output, force=force)
    tc = toolchain(manifest.arch)
    loader = build_loader(manifest.arch, log=log)
    libs = runtime_libs(manifest.arch, log=log)
    api = runtime_api_library(manifest.arch, log=log)
    is_tar = output.name.endswith((".tar.gz", ".tgz"))
    populate = lambda d: _populate(d, artifact=artifact, manifest=manifest, loader=loader,  # noqa: E731
                                   libs=libs, api=api, strip_tool=tc.strip if strip else None)
    if not is_tar:
        with atomic_dir(output, force=force) as tmp:
            files = populate(tmp)
        return BundleResult(path=output, files=files)
    output.parent.mkdir(parents=True, exist_ok=True)
    name = output.name.removesuffix(".tar.gz").removesuffix(".tgz")
    with tempfile.TemporaryDirectory(prefix=f".{name}.tmp-", dir=output.parent) as work:
        bundle = Path(work) / name
        bundle.mkdir()
        files = populate(bundle)
        part = Path(work) / "bundle.tar.gz"
        with tarfile.open(part, "w:gz") as tar:
            tar.add(bundle, arcname=name)
        part.replace(output)
    return BundleResult(path=output, files=files)


def _populate(d: Path, *, artifact: Path, manifest, loader: Path, libs: dict[str, Path],
              api: Path, strip_tool: str | None) -> tuple[tuple[str, int], ...]:
    for sub in ("bin", "lib", "include", "examples"):
        (d / sub).mkdir()
    models = [b.library for b in manifest.builds()]
    for name in models:
        shutil.copy2(artifact / name, d / name)
    shutil.copy2(loader, d / "bin" / "edgecc-run")
    libs = {**libs, api.name: api}
    for name, p in libs.items():
        shutil.copy2(p, d / "lib" / name)
    shutil.copy2(NATIVE_DIR / "edgecc_runtime.h", d / "include" / "edgecc_runtime.h")
    shutil.copy2(NATIVE_DIR / "example" / "run_model.c", d / "examples" / "run_model.c")
    build_example(manifest.arch, d / "bin" / "run_model")
    if strip_tool:
        for name in models:
            _strip(strip_tool, d / name, shared=True)
        for name in ("edgecc-run", "run_model"):
            _strip(strip_tool, d / "bin" / name, shared=False)
        for name in libs:
            _strip(strip_tool, d / "lib" / name, shared=True)
    # the bundled libraries are stripped: the bundle's manifest records their own hashes
    variants = tuple(dataclasses.replace(v, library_sha256=sha256_file(d / v.library),
                                         library_bytes=(d / v.library).stat().st_size)
                     for v in manifest.variants)
    dataclasses.replace(manifest, library_sha256=sha256_file(d / manifest.library),
                        library_bytes=(d / manifest.library).stat().st_size,
                        variants=variants).write(d)
    (d / "run.sh").write_text(RUN_SH)
    (d / "run.sh").chmod(0o755)
    (d / "README.txt").write_text(README.format(
        model=manifest.model_name, target=manifest.target, arch=manifest.arch,
        first=manifest.inputs[0].name if manifest.inputs else "x",
        variants="".join(f"\n{v.library}: the model built for {v.target}, which edgecc-run runs "
                         f"instead on CPUs with\n  "
                         + ", ".join(f for f in v.cpu_features if f not in manifest.cpu_features)
                         + f" (--build {manifest.target} runs model.so)"
                         for v in manifest.variants),
        inputs=", ".join(s.describe() for s in manifest.inputs),
        outputs=", ".join(s.describe() for s in manifest.outputs)))
    return tuple(sorted((str(p.relative_to(d)), p.stat().st_size)
                        for p in d.rglob("*") if p.is_file()))
