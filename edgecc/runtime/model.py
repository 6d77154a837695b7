"""Loading and running an artifact: ``m = edgecc.runtime.load(dir); outputs = m.run({...})``.

It needs only the TVM *runtime*: ``tvm_ffi`` plus ``libtvm_runtime.so`` loaded through ctypes.
It never imports ``tvm`` (whose package import pulls the compiler, ``tvm.relax``, ``tvm.s_tir``)
for CPU artifacts. Inputs are checked against the manifest before anything runs.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import shutil
import statistics
import struct
import sys
import time
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .loadguard import ThreadGuard
from ..errors import ArtifactError, InputError
from .._util import machine_arch
from ..artifact.integrity import check_library, check_runtime
from ..artifact.manifest import Manifest, TensorSpec

# tvm_ffi imports torch (when installed) to speed up torch<->dlpack exchange; a device runtime
# has no use for that, so unless the caller already chose, skip it.
os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")

_KDL_CPU, _KDL_CUDA = 1, 2
ALIGNMENT = 64
_POOLED_ALLOCATOR = 2
_runtime_lib: ctypes.CDLL | None = None


def runtime_library_path() -> Path:
    """libtvm_runtime.so: ``$EDGECC_TVM_RUNTIME`` or the one inside the installed tvm wheel."""
    if os.environ.get("EDGECC_TVM_RUNTIME"):
        return Path(os.environ["EDGECC_TVM_RUNTIME"])
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError("the TVM runtime library was not found: install apache-tvm or set "
                            "EDGECC_TVM_RUNTIME to the path of libtvm_runtime.so")
    return Path(next(iter(spec.submodule_search_locations))) / "lib" / "libtvm_runtime.so"


def _import_ffi_without_torch() -> None:
    """Import ``tvm_ffi`` without letting it import torch. Its ``__init__`` (and two of its
    modules) try ``import torch`` for torch interop: 2.3 s of a device runtime's cold start where
    torch is installed, for nothing (the loader hands it numpy arrays). A process that imported
    torch or tvm_ffi already is left as it is; torch stays importable afterwards, but tvm_ffi
    then does not know torch tensors (pass numpy, or import torch first)."""
    if "tvm_ffi" in sys.modules or "torch" in sys.modules:
        import tvm_ffi  # noqa: F401, PLC0415
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  (import torch -> ImportError)
    try:
        import tvm_ffi  # noqa: F401, PLC0415
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


def _ensure_runtime() -> None:
    global _runtime_lib
    if _runtime_lib is None:
        _import_ffi_without_torch()  # loads libtvm_ffi.so, which the runtime links to

        path = runtime_library_path()
        if not path.is_file():
            raise ArtifactError(f"the TVM runtime library {path} does not exist")
        _runtime_lib = ctypes.CDLL(str(path), ctypes.RTLD_GLOBAL)


@dataclass(frozen=True)
class BenchmarkResult:
    mean_ms: float
    p50_ms: float
    p90_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    repeat: int
    number: int

    def format(self) -> str:
        return (f"mean {self.mean_ms:.3f} ms  p50 {self.p50_ms:.3f} ms  p90 {self.p90_ms:.3f} ms  "
                f"std {self.std_ms:.3f} ms  (min {self.min_ms:.3f}, max {self.max_ms:.3f}; "
                f"{self.repeat} repeats x {self.number} runs)")


def summarize(times_s: list[float], *, number: int) -> BenchmarkResult:
    ms = sorted(t * 1e3 for t in times_s)
    return BenchmarkResult(
        mean_ms=statistics.fmean(ms), p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        std_ms=statistics.pstdev(ms) if len(ms) > 1 else 0.0,
        min_ms=ms[0], max_ms=ms[-1], repeat=len(ms), number=number)


def check_inputs(specs: tuple[TensorSpec, ...], inputs: Mapping[str, Any]) -> list[np.ndarray]:
    """Arrays in manifest order, or an InputError naming every mismatch."""
    names = [s.name for s in specs]
    problems = []
    missing = [n for n in names if n not in inputs]
    if missing:
        problems.append(f"missing input(s) {', '.join(missing)}")
    unknown = [n for n in inputs if n not in names]
    if unknown:
        problems.append(f"unknown input(s) {', '.join(unknown)}")
    arrays = []
    for spec in specs:
        if spec.name not in inputs:
            continue
        a = np.asarray(inputs[spec.name])
        if tuple(a.shape) != spec.shape:
            problems.append(f"input {spec.name!r} has shape {tuple(a.shape)}, expected "
                            f"{spec.shape}")
        if str(a.dtype) != spec.dtype:
            problems.append(f"input {spec.name!r} has dtype {a.dtype}, expected {spec.dtype}")
        arrays.append(np.asarray(a, order="C"))  # (ascontiguousarray makes 0-d 1-d)
    if problems:
        raise InputError("; ".join(problems) + " (the model takes: "
                         + ", ".join(s.describe() for s in specs) + ")")
    return arrays


def aligned(a: np.ndarray, alignment: int = ALIGNMENT) -> np.ndarray:
    """``a`` itself when contiguous, aligned and writeable, else an aligned copy. TVM kernels
    assume 64-byte aligned buffers (they use aligned vector loads); numpy only guarantees 16;
    DLPack cannot export a read-only array."""
    if a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % alignment == 0:
        return a
    buf = np.empty(a.nbytes + alignment, dtype=np.uint8)
    offset = (-buf.ctypes.data) % alignment
    out = buf[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _compact_empty(a: np.ndarray) -> np.ndarray:
    """An empty array of ``a``'s shape and dtype with C-order strides."""
    strides = tuple(int(np.prod(a.shape[i + 1:], dtype=np.int64)) * a.itemsize
                    for i in range(a.ndim))
    base = aligned(np.empty(1, a.dtype))
    return np.lib.stride_tricks.as_strided(base, shape=a.shape, strides=strides)


@functools.cache
def _create_view():
    """libtvm_runtime's ``TVMTensorCreateView(tensor, shape, dtype, byte_offset)``."""
    import tvm_ffi  # noqa: PLC0415

    return tvm_ffi.get_global_func("runtime.TVMTensorCreateView")


def _numpy_dtype(name: str) -> np.dtype | None:
    """The numpy dtype called ``name``: numpy's own, or ml_dtypes' (bfloat16, float8_*; imported
    only for those); None if neither has it."""
    try:
        return np.dtype(name)
    except TypeError:
        pass
    try:
        import ml_dtypes  # noqa: PLC0415  (tvm_ffi's own dependency)

        return np.dtype(getattr(ml_dtypes, name))
    except (ImportError, AttributeError, TypeError):
        return None


def random_inputs(specs: tuple[TensorSpec, ...], *, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if s.dtype.startswith(("float", "bfloat")):
            out[s.name] = rng.standard_normal(s.shape).astype(_numpy_dtype(s.dtype))
        elif s.dtype == "bool":
            out[s.name] = rng.integers(0, 2, s.shape).astype(bool)
        else:
            out[s.name] = rng.integers(0, 10, s.shape).astype(s.dtype)
    return out


_LOADED: dict[str, str] = {}  # library path -> sha256 of what was dlopen'ed from it


def _loadable_path(library: Path, sha256: str) -> str:
    """``library``, or a private copy of it when a different library was already loaded from the
    same path in this process: dlopen would hand back the old, stale code (recompiling into the
    same directory and loading it again, e.g. in a notebook)."""
    key = str(library.resolve())
    if _LOADED.setdefault(key, sha256) == sha256:
        return key
    import tempfile  # noqa: PLC0415

    fd, copy = tempfile.mkstemp(prefix="edgecc-", suffix=".so")
    os.close(fd)
    shutil.copyfile(library, copy)
    return copy


class Model:
    """A loaded artifact. Not thread-safe: one ``run`` at a time per Model."""

    def __init__(self, directory: Path, manifest: Manifest, *, num_threads: int | None = None,
                 build: tuple[str, str, str] | None = None):
        self.directory = directory
        self.manifest = manifest
        # the target whose build runs, its library and that library's sha256
        self.build, library, sha256 = build or (manifest.target, manifest.library,
                                                manifest.library_sha256)
        if num_threads is not None:
            os.environ["TVM_NUM_THREADS"] = str(num_threads)
        _ensure_runtime()
        import tvm_ffi  # noqa: PLC0415

        self._ffi = tvm_ffi
        self._lib = tvm_ffi.load_module(_loadable_path(directory / library, sha256))
        self._vm = self._lib["vm_load_executable"]()
        self._dev_type = _KDL_CUDA if manifest.device == "cuda" else _KDL_CPU
        self._vm["vm_initialization"](self._dev_type, 0, _POOLED_ALLOCATOR,
                                      _KDL_CPU, 0, _POOLED_ALLOCATOR)
        self._main = self._vm["main"]
        # the thread count follows the load unless EDGECC_ADAPTIVE_THREADS=0 (CPU artifacts)
        full = int(os.environ.get("TVM_NUM_THREADS") or 0)
        self._guard = (ThreadGuard(full) if full > 1 and manifest.device == "cpu"
                       and os.environ.get("EDGECC_ADAPTIVE_THREADS", "1") != "0" else None)
        self._threads = full
        self._config_threads = (tvm_ffi.get_global_func("runtime.config_threadpool")
                                if self._guard is not None else None)
        # run()'s fast path: (name, shape, numpy dtype) of each input, compared as they are;
        # anything else goes through check_inputs, which says what is wrong.
        self._expected = tuple((s.name, s.shape, _numpy_dtype(s.dtype)) for s in manifest.inputs)
        self._sequence = (list, tuple, tvm_ffi.Array)
        self._staging: dict[int, tuple[np.ndarray, Any]] = {}

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.outputs

    def _args(self, inputs: Mapping[str, Any]):
        """The VM's arguments. Numpy arrays of the right shape and dtype go without any other
        check (a full one costs ~10 us, 3% of a small CNN's run), as they are when contiguous and
        aligned, else copied into an aligned buffer this Model keeps per input (a fresh copy
        costs a new allocation every run)."""
        if len(inputs) == len(self._expected):
            args = []
            for i, (name, shape, dtype) in enumerate(self._expected):
                a = inputs.get(name)
                if (type(a) is not np.ndarray or a.shape != shape or a.dtype != dtype
                        or not a.flags.c_contiguous):
                    break
                if not a.flags.writeable:  # DLPack cannot export it: copy
                    args.append(self._staged(i, a))
                    continue
                tensor = self._tensor(a)
                args.append(self._staged(i, a) if tensor.data_ptr() % ALIGNMENT else tensor)
            else:
                return args
        return [self._tensor(aligned(a)) for a in check_inputs(self.manifest.inputs, inputs)]

    def _tensor(self, a: np.ndarray):
        """``a`` as a TVM tensor without a copy. DLPack has no bfloat16/float8 for numpy
        (ml_dtypes' types): those go as unsigned integers of their size, viewed as their dtype."""
        if a.size == 0:  # numpy gives empty arrays all-zero strides; TVM checks compact ones
            a = _compact_empty(a)
        if a.dtype.kind != "V":
            return self._ffi.from_dlpack(a)
        raw = self._ffi.from_dlpack(a.view(f"uint{a.dtype.itemsize * 8}"))
        return _create_view()(raw, self._ffi.Shape(a.shape), self._ffi.dtype(a.dtype.name), 0)

    def _array(self, t, spec: TensorSpec) -> np.ndarray:
        """Output tensor ``t`` as a numpy array of its own (a copy)."""
        dtype = _numpy_dtype(spec.dtype)
        if dtype is None or dtype.kind != "V":
            return np.from_dlpack(t).copy()
        uint = f"uint{dtype.itemsize * 8}"
        raw = _create_view()(t, t.shape, self._ffi.dtype(uint), 0)
        return np.from_dlpack(raw).copy().view(dtype)

    def _staged(self, index: int, array: np.ndarray):
        """``array`` copied into input ``index``'s aligned staging buffer, as a TVM tensor."""
        if index not in self._staging:
            buffer = aligned(np.empty_like(array))
            self._staging[index] = (buffer, self._tensor(buffer))
        buffer, tensor = self._staging[index]
        np.copyto(buffer, array)
        return tensor

    def run(self, inputs: Mapping[str, Any] | None = None, /, **named: Any) -> dict[str, np.ndarray]:
        """Run once; inputs by name (a mapping or keywords). Returns outputs by name."""
        feed = dict(inputs or {}, **named)
        args = self._args(feed)
        guard = self._guard
        if guard is None:
            result = self._main(*args)
        else:  # one thread while the CPU is busy (edgecc/runtime/loadguard.py)
            start = time.perf_counter()
            threads = guard.threads(start)
            if threads != self._threads:
                self._config_threads(1, threads)
                self._threads = threads
            result = self._main(*args)
            end = time.perf_counter()
            guard.record(threads, end - start, end)
        leaves = list(result) if isinstance(result, self._sequence) else [result]
        if len(leaves) != len(self.manifest.outputs):
            raise ArtifactError(f"the library returned {len(leaves)} outputs, the manifest "
                                f"lists {len(self.manifest.outputs)}")
        return {spec.name: self._array(t, spec)
                for spec, t in zip(self.manifest.outputs, leaves, strict=True)}

    def benchmark(self, inputs: Mapping[str, Any] | None = None, *, repeat: int = 30,
                  number: int = 0, min_repeat_ms: int = 50) -> BenchmarkResult:
        """Time ``main`` with TVM's time evaluator: ``repeat`` measurements, each the mean of
        ``number`` runs (0: as many as fill ``min_repeat_ms``). Random inputs if none given."""
        if repeat < 1:
            raise InputError("repeat must be at least 1")
        feed = inputs if inputs is not None else random_inputs(self.manifest.inputs)
        args = self._args(feed)
        self._vm["save_function"]("main", "__edgecc_bench", 0, *args)
        n = max(number, 1)
        evaluator = self._ffi.get_global_func("runtime.RPCTimeEvaluator")(
            self._vm, "__edgecc_bench", self._dev_type, 0, n, repeat,
            0 if number else min_repeat_ms, 100, 0, 1, 0, "")
        blob = evaluator()
        times = list(struct.unpack("@" + "d" * repeat, bytes(blob)))
        return summarize(times, number=n)

    def profile_kernels(self, inputs: Mapping[str, Any] | None = None, *,
                        runs: int = 20) -> dict[str, float]:
        """Each function the VM calls (kernels by their symbol name), timed inside the model:
        the median over ``runs`` runs of its time per run (a kernel called twice sums both
        calls), in seconds. Every call is timed through the VM's instrument hook, so each time
        includes a constant callback overhead of about a microsecond. Random inputs if none
        given."""
        import time  # noqa: PLC0415

        if runs < 1:
            raise InputError("runs must be at least 1")
        feed = inputs if inputs is not None else random_inputs(self.manifest.inputs)
        args = self._args(feed)
        per_run: dict[str, float] = {}
        started: list[float] = []

        def instrument(func, symbol, before_run, ret_value, *call_args):
            now = time.perf_counter()
            if before_run:
                started.append(now)
            else:
                per_run[symbol] = per_run.get(symbol, 0.0) + now - started.pop()
            return 0  # VMInstrumentReturnKind.NO_OP

        samples: dict[str, list[float]] = {}
        self._vm["set_instrument"](self._ffi.convert(instrument))
        try:
            self._main(*args)  # warm-up
            for _ in range(runs):
                per_run.clear()
                self._main(*args)
                for symbol, seconds in per_run.items():
                    samples.setdefault(symbol, []).append(seconds)
        finally:
            self._vm["set_instrument"](None)
        return {symbol: statistics.median(v) for symbol, v in samples.items()}


def choose_build(manifest: Manifest, flags: Set[str], *, build: str | None = None,
                 source: str = "the artifact") -> tuple[str, str, str]:
    """(target, library, sha256) of the build to run on a CPU with feature ``flags``: the one
    named ``build``, else the first ISA variant the CPU has every feature of, else the base
    build. A build needing a feature the CPU lacks is refused (it would die of an illegal
    instruction). No flags (CPU unknown): the base build, or the one named, unchecked."""
    known = manifest.builds()
    if build is not None:
        known = tuple(b for b in known if b.target == build)
        if not known:
            raise ArtifactError(f"{source} has no {build!r} build (it has: "
                                f"{', '.join(b.target for b in manifest.builds())})")
    for b in known:
        if not flags and build is None and b.target != manifest.target:
            continue  # an unknown CPU runs the base build unless told otherwise
        missing = [f for f in b.cpu_features if f not in flags] if flags else []
        if not missing:
            return b.target, b.library, b.library_sha256
        if build is not None or b.target == manifest.target:
            raise ArtifactError(f"this CPU lacks {', '.join(missing)}, which the {b.target} "
                                f"build of {source} needs")
    raise AssertionError("unreachable: the base build is last")


def runnable_builds(manifest: Manifest, flags: Set[str] | None = None
                    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the builds this CPU can run, why each other one cannot), by target name."""
    from ..targets import cpu_flags  # noqa: PLC0415

    flags = cpu_flags() if flags is None else flags
    ok, not_run = [], []
    for name in (b.target for b in manifest.builds()):
        if not flags and name != manifest.target:
            not_run.append(f"{name} (this CPU's features are unknown)")
            continue
        try:
            ok.append(choose_build(manifest, flags, build=name)[0])
        except ArtifactError as e:
            not_run.append(f"{name} ({e})")
    return tuple(ok), tuple(not_run)


def load(directory: str | os.PathLike, *, num_threads: int | None = None,
         build: str | None = None, verify: bool = False) -> Model:
    """Load an artifact directory written by ``edgecc compile``. An artifact with ISA variants
    (x86_64: an AVX-512 build too) runs the best build this CPU can, or the one named ``build``
    (a target name: ``x86_64``, ``x86_64-avx512``); ``Model.build`` says which.

    Before anything is loaded the library is checked (:mod:`edgecc.artifact.integrity`): its
    size always, its sha256 on first use and whenever ``verify``, the TVM runtime it was built
    for."""
    d = Path(directory)
    if not d.is_dir():
        raise ArtifactError(f"artifact directory '{d}' does not exist")
    manifest = Manifest.read(d)
    here = machine_arch()
    if manifest.arch != here:
        raise ArtifactError(f"artifact '{d}' was compiled for {manifest.arch} (target "
                            f"{manifest.target}); this machine is {here}: run it on an "
                            f"{manifest.arch} device")
    check_runtime(manifest, _runtime_version(), source=f"artifact '{d}'")
    if manifest.device == "cuda":
        _require_gpu(manifest)
    from ..targets import cpu_flags  # noqa: PLC0415

    chosen = choose_build(manifest, cpu_flags(), build=build, source=f"artifact '{d}'")
    check_library(d, manifest.build_named(chosen[0]), verify=verify)
    return Model(d, manifest, num_threads=num_threads, build=chosen)


@functools.cache
def _runtime_version() -> str:
    """The installed TVM runtime's version ('' when unknown: a source build, or
    ``$EDGECC_TVM_RUNTIME`` pointing at a library of its own)."""
    if os.environ.get("EDGECC_TVM_RUNTIME"):
        return ""
    from importlib import metadata  # noqa: PLC0415

    try:
        return metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:
        return ""


def _require_gpu(manifest: Manifest) -> None:
    _ensure_runtime()
    spec = importlib.util.find_spec("tvm")
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libtvm_runtime_cuda.so"
    try:
        ctypes.CDLL(str(lib), ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise ArtifactError(f"artifact for {manifest.target} needs a CUDA GPU and driver; "
                            f"none is usable here ({e})") from None
