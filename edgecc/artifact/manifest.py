"""The artifact manifest (``model.json``): the one definition both the compiler writes and every
runtime (the Python loader, the native loader) reads and validates. No TVM imports here."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._util import read_json
from ..errors import ArtifactError

FORMAT = "edgecc-artifact"
FORMAT_VERSION = 1
MANIFEST_NAME = "model.json"
LIBRARY_NAME = "model.so"
DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64", "bool", "float64", "int16",
          "uint16", "uint32", "uint64", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu")


DYNAMIC = -1  # an output dimension known only at run time (NonZero, Range, ...)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # DYNAMIC (-1) for an output dim that depends on input values
    dtype: str

    def describe(self) -> str:
        dims = ("?" if d == DYNAMIC else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{','.join(dims)}]"


@dataclass(frozen=True)
class Variant:
    """Another build of the same model in the artifact, for CPUs with more features (an
    AVX-512 build beside the AVX2 one): the loader runs the first variant whose
    ``cpu_features`` the CPU has, else the base library."""
    target: str
    library: str
    library_sha256: str
    cpu_features: tuple[str, ...]
    tvm_target: dict[str, Any] = field(default_factory=dict)
    kernels: dict[str, Any] = field(default_factory=dict)  # counts (and flops) by schedule kind
    library_bytes: int = 0  # the library's size (0: not recorded, by an older edgecc)


@dataclass(frozen=True)
class Manifest:
    model_name: str
    model_sha256: str
    target: str
    arch: str
    device: str
    tvm_target: dict[str, Any]
    tvm_version: str
    edgecc_version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    passes: tuple[str, ...]
    library: str = LIBRARY_NAME
    library_sha256: str = ""
    library_bytes: int = 0  # the library's size, checked on every load (0: not recorded)
    options: dict[str, Any] = field(default_factory=dict)
    cpu_features: tuple[str, ...] = ()  # what the base library needs of the CPU
    variants: tuple[Variant, ...] = ()
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def builds(self) -> tuple[Variant, ...]:
        """Every build of the model in the artifact: the ISA variants first, then the base
        library (as a Variant of the manifest's own target)."""
        return (*self.variants, Variant(self.target, self.library, self.library_sha256,
                                        self.cpu_features, self.tvm_target,
                                        self.options.get("kernels") or {}, self.library_bytes))

    def build_named(self, target: str) -> Variant:
        return next(b for b in self.builds() if b.target == target)

    def to_json(self) -> str:
        d = asdict(self)
        for key in ("inputs", "outputs"):
            d[key] = [{"name": t["name"], "shape": list(t["shape"]), "dtype": t["dtype"]}
                      for t in d[key]]
        d["passes"] = list(self.passes)
        d["cpu_features"] = list(self.cpu_features)
        for v in d["variants"]:
            v["cpu_features"] = list(v["cpu_features"])
        d["variants"] = list(d["variants"])
        return json.dumps(d, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "manifest") -> Manifest:
        if d.get("format") != FORMAT:
            raise ArtifactError(f"{source}: not an edgecc manifest (format={d.get('format')!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{source}: manifest format_version {d.get('format_version')} is "
                                f"not supported (this edgecc reads {FORMAT_VERSION})")
        try:
            specs = {k: tuple(_spec(t, source, dynamic=k == "outputs") for t in d[k])
                     for k in ("inputs", "outputs")}
            fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
            fields.update(specs, passes=tuple(d["passes"]),
                          cpu_features=tuple(d.get("cpu_features", ())),
                          variants=tuple(_variant(v) for v in d.get("variants", ())))
            m = cls(**fields)
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{source}: malformed manifest ({e})") from None
        if m.device not in ("cpu", "cuda"):
            raise ArtifactError(f"{source}: unknown device {m.device!r}")
        return m

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ArtifactError(f"{directory}: no {MANIFEST_NAME} (not an edgecc artifact directory)")
        return cls.from_dict(read_json(path, ArtifactError), source=str(path))

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(self.to_json())
        return path


def _variant(v: dict[str, Any]) -> Variant:
    return Variant(**{**v, "cpu_features": tuple(v["cpu_features"])})


def _spec(t: dict[str, Any], source: str, *, dynamic: bool = False) -> TensorSpec:
    shape = tuple(int(s) for s in t["shape"])
    if any(s < (DYNAMIC if dynamic else 0) for s in shape):
        raise ArtifactError(f"{source}: tensor {t['name']!r} has a negative dimension")
    if t["dtype"] not in DTYPES:
        raise ArtifactError(f"{source}: tensor {t['name']!r} has unsupported dtype {t['dtype']!r}")
    return TensorSpec(name=str(t["name"]), shape=shape, dtype=str(t["dtype"]))
