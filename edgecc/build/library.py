"""Build stage: a lowered Relax IRModule becomes a shared library for the target.

CPU targets are compiled by LLVM and linked by the host compiler (x86_64) or the target's cross
compiler (aarch64). CUDA targets get their device kernels from TVM's CUDA codegen; the kernels are
also compiled ahead of time with nvcc for the target's SM, which proves they compile and ships the
fatbin beside the library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import ToolchainError
from ..targets import Target

CUDA_HOME_CANDIDATES = ("/usr/local/cuda",)


@dataclass(frozen=True)
class BuildResult:
    library: Path
    cuda_fatbin: Path | None = None


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), *CUDA_HOME_CANDIDATES):
        if home and Path(home, "bin", "nvcc").is_file():
            return str(Path(home, "bin", "nvcc"))
    return None


def host_compiler() -> str:
    for cc in ("g++", "c++", "clang++"):
        if shutil.which(cc):
            return cc
    raise ToolchainError("no C++ compiler (g++) found to link the shared library; "
                         "install the Debian package g++")


def check_toolchain(target: Target) -> None:
    """Fail early, before any compile work, when a tool the target needs is missing."""
    if target.cross_compiler and not shutil.which(target.cross_compiler):
        raise ToolchainError(
            f"target {target.name!r} needs the cross compiler {target.cross_compiler!r}, which is "
            f"not on PATH; install the Debian package {target.cross_package} "
            f"(apt-get install {target.cross_package})")
    if not target.cross_compiler:
        host_compiler()
    if target.is_gpu and find_nvcc() is None:
        raise ToolchainError(
            f"target {target.name!r} needs nvcc (the CUDA toolkit), which is neither on PATH nor "
            f"in $CUDA_HOME or {', '.join(CUDA_HOME_CANDIDATES)}")


def build_library(mod, target: Target, out_dir: Path, *, name: str = "model.so") -> BuildResult:
    """Compile the lowered module and export ``out_dir/<name>``."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415
    from tvm.support import cc  # noqa: PLC0415

    check_toolchain(target)
    tvm_target = target.to_tvm()
    with tvm.transform.PassContext(opt_level=3):
        ex = relax.build(mod, target=tvm_target, relax_pipeline=None)
    lib = out_dir / name
    compiler = target.cross_compiler or host_compiler()
    ex.export_library(str(lib), fcompile=cc.cross_compiler(compiler))
    fatbin = None
    if target.is_gpu:
        fatbin = _compile_cuda_kernels(ex, target, out_dir)
    return BuildResult(library=lib, cuda_fatbin=fatbin)


FATBIN_MAGIC = 0xBA55ED50
FATBIN_KIND = {1: "ptx", 2: "cubin"}


def fatbin_entries(data: bytes) -> list[tuple[str, int]]:
    """(kind, sm) of every entry of a CUDA fatbin: e.g. [("cubin", 87)]."""
    import struct  # noqa: PLC0415

    if len(data) < 16:
        raise ValueError("not a CUDA fatbin: too short")
    magic, _version, header, body = struct.unpack_from("<IHHQ", data, 0)
    if magic != FATBIN_MAGIC:
        raise ValueError("not a CUDA fatbin: bad magic")
    entries, off, end = [], header, header + body
    while off + 48 <= min(end, len(data)):
        kind, _, entry_header, size = struct.unpack_from("<HHIQ", data, off)
        sm = struct.unpack_from("<I", data, off + 28)[0]
        entries.append((FATBIN_KIND.get(kind, str(kind)), sm))
        off += entry_header + size
    return entries


def _cuda_modules(module):
    if module.kind == "cuda":
        yield module
    for m in module.imports:
        yield from _cuda_modules(m)


def _compile_cuda_kernels(ex, target: Target, out_dir: Path) -> Path:
    nvcc = find_nvcc()
    assert nvcc is not None  # checked by check_toolchain
    sources = [m.inspect_source("cu") or m.inspect_source("") for m in _cuda_modules(ex.mod)]
    if not sources:
        raise ToolchainError("the CUDA build produced no device kernels")
    arch = target.tvm_target.get("arch", "sm_75")
    src = out_dir / "model.cu"
    src.write_text("\n".join(sources))
    fatbin = out_dir / "model.cuda.fatbin"
    cmd = [nvcc, "--fatbin", "-O3", f"-arch={arch}", "-o", str(fatbin), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    src.unlink()
    if proc.returncode != 0:
        raise ToolchainError(f"nvcc failed compiling the CUDA kernels for {arch}:\n"
                             f"{proc.stderr.strip()[-2000:]}")
    return fatbin
