"""Fallback notes: what an optimization pass left unoptimized, and why.

A pass that cannot handle part of a model leaves that part as it was and calls :func:`report`;
:func:`collecting` gathers the notes of the passes run inside it (the compile puts them in the
manifest and prints them). Outside :func:`collecting` a report goes nowhere.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("edgecc_fallbacks",
                                                                         default=None)


def report(note: str) -> None:
    notes = _NOTES.get()
    if notes is not None and note not in notes:
        notes.append(note)


@contextmanager
def collecting() -> Iterator[list[str]]:
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def is_scheduled(func) -> bool:
    """The PrimFunc already carries a schedule (a tuned record, a transfer, the rule, dlight)."""
    return func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False))


def unscheduled_kernels(mod):
    """(GlobalVar, PrimFunc) of every kernel of ``mod`` that has no schedule yet."""
    from tvm import tirx  # noqa: PLC0415

    return [(gv, f) for gv, f in mod.functions.items()
            if isinstance(f, tirx.PrimFunc) and not is_scheduled(f)]


def try_kernel(pass_name: str, gv, schedule, *, left: str):
    """``schedule()`` for kernel ``gv``; if it raises, None and a report that the kernel is
    ``left`` (e.g. "left unscheduled"): one kernel that fails never fails its pass."""
    try:
        return schedule()
    except Exception as e:  # noqa: BLE001  (TVM's schedule errors have many types)
        report(f"{pass_name}: kernel '{gv.name_hint}' {left} ({e!r:.120})")
        return None
