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
