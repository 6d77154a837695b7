"""The native loader ``edgecc-run`` (sources in ``edgecc/deploy/native/``: ``main.cc``,
``manifest.cc``, ``integrity.cc``, ``run.cc``, ``serve.cc``) and the TVM runtime libraries it
links, per CPU architecture.

x86_64 takes ``libtvm_runtime.so`` and ``libtvm_ffi.so`` from the installed wheels. aarch64 takes
them from the official aarch64 wheels of the same pinned versions, fetched once with
``pip download`` (the package registry) and cached; only the runtime libraries are extracted,
never ``libtvm_compiler``. The loader is compiled against the headers the host tvm_ffi wheel
ships, by ``make -C native`` with the architecture's compiler, and cached by source hash.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .._util import machine_arch
from ..errors import ToolchainError

NATIVE_DIR = Path(str(importlib.resources.files(__package__))) / "native"  # package data: the
# loader's sources and Makefile
RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
RUNTIME_API_LIB = "libedgecc_runtime.so"  # the C API (native/edgecc_runtime.h)
WHEEL_MEMBERS = {"libtvm_runtime.so": "tvm/lib/libtvm_runtime.so",
                 "libtvm_ffi.so": "tvm_ffi/lib/libtvm_ffi.so"}


@dataclass(frozen=True)
class Toolchain:
    arch: str
    cxx: str
    strip: str
    debian_package: str


TOOLCHAINS = {
    "x86_64": Toolchain("x86_64", "g++", "strip", "g++"),
    "aarch64": Toolchain("aarch64", "aarch64-linux-gnu-g++", "aarch64-linux-gnu-strip",
                         "g++-aarch64-linux-gnu"),
}


def native_cache_root() -> Path:
    """Runtime libraries and loader builds: ``$EDGECC_NATIVE_CACHE`` or
    ``~/.cache/edgecc/native`` (kept apart from the compile cache: they depend only on versions)."""
    if os.environ.get("EDGECC_NATIVE_CACHE"):
        return Path(os.environ["EDGECC_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgecc" / "native"


def toolchain(arch: str) -> Toolchain:
    if arch not in TOOLCHAINS:
        raise ToolchainError(f"no native loader toolchain for architecture {arch!r}")
    tc = TOOLCHAINS[arch]
    for tool in (tc.cxx, tc.strip):
        if shutil.which(tool) is None:
            raise ToolchainError(f"building the {arch} loader needs {tool!r}, which is not on "
                                 f"PATH; install the Debian package {tc.debian_package}")
    if shutil.which("make") is None:
        raise ToolchainError("building the native loader needs 'make' (Debian package make)")
    return tc


def _pkg_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError(f"the Python package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def versions() -> tuple[str, str]:
    return metadata.version("apache-tvm"), metadata.version("apache-tvm-ffi")


def ffi_include() -> Path:
    return _pkg_dir("tvm_ffi") / "include"


def runtime_libs(arch: str, *, log=lambda _msg: None) -> dict[str, Path]:
    """Paths of libtvm_runtime.so and libtvm_ffi.so for ``arch``."""
    if arch == "x86_64":
        return {"libtvm_runtime.so": _pkg_dir("tvm") / "lib" / "libtvm_runtime.so",
                "libtvm_ffi.so": _pkg_dir("tvm_ffi") / "lib" / "libtvm_ffi.so"}
    tvm_v, ffi_v = versions()
    dest = native_cache_root() / f"runtime-{arch}-tvm{tvm_v}-ffi{ffi_v}"
    libs = {name: dest / name for name in RUNTIME_LIBS}
    if all(p.is_file() for p in libs.values()):
        return libs
    platform = {"aarch64": "manylinux_2_28_aarch64"}[arch]
    with tempfile.TemporaryDirectory() as tmp:
        log(f"[edgecc] fetching the {arch} TVM runtime (apache-tvm=={tvm_v}, "
            f"apache-tvm-ffi=={ffi_v}) from the package registry ...")
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--platform", platform, "--python-version", "3.11", "-d", tmp,
               f"apache-tvm=={tvm_v}", f"apache-tvm-ffi=={ffi_v}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ToolchainError(f"could not fetch the {arch} TVM runtime wheels with pip: "
                                 f"{proc.stderr.strip()[-800:]}")
        staging = Path(tempfile.mkdtemp(dir=tmp))
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                for name, member in WHEEL_MEMBERS.items():
                    if member in z.namelist():
                        (staging / name).write_bytes(z.read(member))
        missing = [n for n in RUNTIME_LIBS if not (staging / n).is_file()]
        if missing:
            raise ToolchainError(f"the {arch} wheels did not contain {', '.join(missing)}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(staging), dest)
    return libs


def build_loader(arch: str, *, log=lambda _msg: None) -> Path:
    """The ``edgecc-run`` binary for ``arch`` (built once per source/version, then cached), with
    ``libedgecc_runtime.so`` (the C API it is a client of) beside it."""
    tc = toolchain(arch)
    libs = runtime_libs(arch, log=log)
    h = hashlib.sha256()
    for src in sorted(NATIVE_DIR.iterdir()):
        if src.is_file():
            h.update(src.name.encode() + b"\0" + src.read_bytes())
    h.update(repr((arch, versions())).encode())
    out = native_cache_root() / f"loader-{arch}-{h.hexdigest()[:16]}"
    if (out / "edgecc-run").is_file() and (out / RUNTIME_API_LIB).is_file():
        return out / "edgecc-run"
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"[edgecc] building the native loader for {arch} with {tc.cxx} ...")
    libdir = libs["libtvm_runtime.so"].parent
    if libs["libtvm_ffi.so"].parent != libdir:  # x86_64: the two wheels' lib dirs differ
        libdir = Path(tempfile.mkdtemp(prefix="edgecc-libs-"))
        for name, p in libs.items():
            (libdir / name).symlink_to(p)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        cmd = ["make", "-s", "-B", "-C", str(NATIVE_DIR), f"CXX={tc.cxx}",
               f"FFI_INCLUDE={ffi_include()}", f"LIBDIR={libdir}",
               f"OUT={Path(tmp) / 'edgecc-run'}", f"LIB={Path(tmp) / RUNTIME_API_LIB}",
               f"TVM_VERSION={versions()[0]}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ToolchainError("building the native loader failed:\n"
                                 f"{proc.stderr.strip()[-2000:]}")
        shutil.rmtree(out, ignore_errors=True)
        Path(tmp).rename(out)
    return out / "edgecc-run"


def runtime_api_library(arch: str, *, log=lambda _msg: None) -> Path:
    """``libedgecc_runtime.so`` for ``arch``: the C API (``edgecc_runtime.h``)."""
    return build_loader(arch, log=log).parent / RUNTIME_API_LIB


def build_example(arch: str, dest: Path, *, log=lambda _msg: None) -> Path:
    """The C example (``native/example/run_model.c``) compiled for ``arch`` against the C API,
    to ``dest`` (it finds ``libedgecc_runtime.so`` in ``../lib`` at run time)."""
    tc = toolchain(arch)
    lib = runtime_api_library(arch, log=log)
    cmd = [tc.cxx, "-x", "c", "-O2", "-std=c11", "-Wall", "-I", str(NATIVE_DIR),
           str(NATIVE_DIR / "example" / "run_model.c"), "-x", "none", "-o", str(dest),
           "-L", str(lib.parent), "-l:" + RUNTIME_API_LIB, "-Wl,-rpath,$ORIGIN/../lib",
           "-Wl,--allow-shlib-undefined"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ToolchainError(f"building the C example failed:\n{proc.stderr.strip()[-2000:]}")
    return dest


def server_command(arch: str, *, tracker: str, key: str, host: str = "127.0.0.1", port: int = 0,
                   threads: int | None = None, extra: tuple[str, ...] = (),
                   log=lambda _msg: None
                   ) -> tuple[list[str], dict[str, str]]:
    """argv and environment that start ``edgecc-run serve`` for ``arch`` on this machine: natively,
    or under ``qemu-aarch64`` for an aarch64 server on an x86 host (an emulated ARM board)."""
    binary = build_loader(arch, log=log)
    libdir = {str(p.parent) for p in runtime_libs(arch, log=log).values()}
    env = dict(os.environ)
    args = [str(binary), "serve", "--tracker", tracker, "--key", key, "--host", host,
            "--port", str(port)]
    if threads:
        args += ["--threads", str(threads)]
    args += list(extra)
    if arch == machine_arch():
        env["LD_LIBRARY_PATH"] = ":".join([*sorted(libdir), env.get("LD_LIBRARY_PATH", "")])
        return args, env
    if arch != "aarch64" or shutil.which("qemu-aarch64") is None:
        raise ToolchainError(f"cannot run an {arch} server here: needs qemu-aarch64 (Debian "
                             "package qemu-user)")
    sysroot = "/usr/aarch64-linux-gnu"
    return (["qemu-aarch64", "-L", sysroot, "-E", "LD_LIBRARY_PATH=" + ":".join(sorted(libdir)),
             *args], env)
