"""Named targets: one JSON file per target under ``edgecc/targets/`` (package data, not code).

A target file holds the TVM target dict, an optional host target dict (for GPU targets), the
CPU architecture of the device, the cross compiler that links its shared library (and the Debian
package that provides it) and a one-line description. Raw triples map to a named default through
the ``aliases`` lists. Nothing here imports TVM.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Set
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .._util import machine_arch, read_json
from ..errors import TargetError

# package data, where an installed wheel has it too: the target files beside this module and
# the shipped tuning logs (edgecc/tuning_logs/)
TARGETS_DATA = Path(str(importlib.resources.files(__package__)))
DATA = TARGETS_DATA.parent
_KNOWN_ARCHS = ("x86_64", "aarch64")
_REQUIRED = ("name", "description", "arch", "tvm_target")


def targets_dir() -> Path:
    return Path(os.environ.get("EDGECC_TARGETS_DIR", TARGETS_DATA))


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str
    tvm_target: MappingProxyType
    host: MappingProxyType | None = None
    cross_compiler: str | None = None
    cross_package: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # Other named targets whose build an artifact for this one also carries; the loader runs
    # the first one whose cpu_features the CPU has (x86_64 carries an AVX-512 build).
    variants: tuple[str, ...] = field(default_factory=tuple)
    # The CPU feature flags (as /proc/cpuinfo names them) this target's code needs beyond its
    # architecture's baseline.
    cpu_features: tuple[str, ...] = field(default_factory=tuple)
    # As a variant, built only for int8 models (its ISA adds int8 dot products, nothing fp32
    # code uses).
    int8_only: bool = False

    @property
    def kind(self) -> str:
        return self.tvm_target["kind"]

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def device(self) -> str:
        """The runtime device the artifact runs on ("cpu" or "cuda")."""
        return "cuda" if self.is_gpu else "cpu"

    def target_json(self) -> dict[str, Any]:
        """The TVM target as a plain dict, host folded in (what ``tvm.target.Target`` takes)."""
        d = _thaw(self.tvm_target)
        if self.host is not None:
            d["host"] = _thaw(self.host)
        return d

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "arch": self.arch,
            "tvm_target": _thaw(self.tvm_target),
            "host": _thaw(self.host) if self.host is not None else None,
            "cross_compiler": self.cross_compiler, "cross_package": self.cross_package,
            "aliases": list(self.aliases), "variants": list(self.variants),
            "cpu_features": list(self.cpu_features), "int8_only": self.int8_only,
        }

    def to_tvm(self):
        """The ``tvm.target.Target`` (imports TVM)."""
        import tvm  # noqa: PLC0415  (compiler side only)

        return tvm.target.Target(self.target_json())


def _freeze(d: Any) -> Any:
    if isinstance(d, dict):
        return MappingProxyType({k: _freeze(v) for k, v in d.items()})
    if isinstance(d, list):
        return tuple(_freeze(v) for v in d)
    return d


def _thaw(d: Any) -> Any:
    if isinstance(d, MappingProxyType | dict):
        return {k: _thaw(v) for k, v in d.items()}
    if isinstance(d, tuple):
        return [_thaw(v) for v in d]
    return d


def parse_target(data: dict[str, Any], *, source: str) -> Target:
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise TargetError(f"{source}: missing field(s) {', '.join(missing)}")
    if data["arch"] not in _KNOWN_ARCHS:
        raise TargetError(f"{source}: arch must be one of {', '.join(_KNOWN_ARCHS)}, "
                          f"got {data['arch']!r}")
    tt = data["tvm_target"]
    if not isinstance(tt, dict) or "kind" not in tt:
        raise TargetError(f"{source}: tvm_target must be a dict with a 'kind'")
    return Target(
        name=data["name"], description=data["description"], arch=data["arch"],
        tvm_target=_freeze(tt), host=_freeze(data["host"]) if data.get("host") else None,
        cross_compiler=data.get("cross_compiler"), cross_package=data.get("cross_package"),
        aliases=tuple(data.get("aliases", ())), variants=tuple(data.get("variants", ())),
        cpu_features=tuple(data.get("cpu_features", ())),
        int8_only=bool(data.get("int8_only", False)),
    )


@cache
def _load_all(directory: str) -> dict[str, Target]:
    out: dict[str, Target] = {}
    d = Path(directory)
    if not d.is_dir():
        raise TargetError(f"targets directory {d} does not exist")
    for f in sorted(d.glob("*.json")):
        t = parse_target(read_json(f, TargetError), source=str(f))
        if t.name != f.stem:
            raise TargetError(f"{f}: name {t.name!r} does not match the file name")
        out[t.name] = t
    return out


def list_targets() -> list[Target]:
    return list(_load_all(str(targets_dir())).values())


@cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (x86: /proc/cpuinfo 'flags'); empty if unknown. Read
    once per process."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_target_name(machine: str | None = None,
                       flags: Set[str] | None = None) -> str:
    """The named target for this machine's CPU: ``x86_64-avx512`` on x86 with AVX-512, else
    ``x86_64``; ``aarch64`` on 64-bit ARM."""
    arch = machine_arch(machine)
    if arch == "x86_64":
        avx512 = set(get_target("x86_64-avx512").cpu_features)
        return "x86_64-avx512" if avx512 <= (cpu_flags() if flags is None else flags) else "x86_64"
    if arch == "aarch64":
        return "aarch64"
    raise TargetError(f"no native target for a {arch} machine; name one (see 'edgecc targets')")


def variant_targets(target: Target, *, int8: bool = False) -> list[Target]:
    """The targets whose builds an artifact for ``target`` carries besides its own (those
    marked ``int8_only`` only for an ``int8`` model)."""
    out = []
    for name in target.variants:
        v = get_target(name)
        if v.int8_only and not int8:
            continue
        if v.arch != target.arch or v.is_gpu or target.is_gpu:
            raise TargetError(f"target {target.name!r}: variant {name!r} must be a CPU target of "
                              f"the same architecture ({target.arch})")
        out.append(v)
    return out


def get_target(name: str) -> Target:
    """A named target, ``native`` (this machine's CPU, see :func:`native_target_name`) or a raw
    triple (``aarch64-linux-gnu``) mapped to its default."""
    targets = _load_all(str(targets_dir()))
    if name == "native":
        name = native_target_name()
    if name in targets:
        return targets[name]
    for t in targets.values():
        if name in t.aliases:
            return t
    raise TargetError(f"unknown target {name!r}; known targets: {', '.join(sorted(targets))} "
                      "(see 'edgecc targets'), or 'native' for this machine's CPU")
