"""Choose the runtime's thread count from the run times it sees (no TVM imports here).

TVM's thread pool splits every parallel kernel statically: task i runs on worker i, and the
caller waits for all of them. On a busy CPU (an edge device always is: camera, network, UI) a
worker that is not scheduled stalls every kernel of the model for a time slice: mobilenetv2
went from 0.5 ms to 164 ms p50 beside two busy processes on 2 cores, while one thread stayed at
0.74 ms. :class:`ThreadGuard` keeps the thread count that is faster *now*. It times each run and
now and then tries the other setting (a *probe*: one untimed run to wake the pool, then one
judged run). It switches when the judged run beats the current setting's recent median. After a
lost probe the next comes twice as many runs later, but at least every ``MAX_GAP_S`` (so an idle
CPU gets all threads back) and no more often than keeps probes under ``MAX_PROBE_SHARE`` of the
time (a probe with all threads on a busy CPU stalls). A stall with all threads, a run far slower
than that setting's recent best, brings the next probe of one thread forward.
"""

from __future__ import annotations

import statistics
from collections import deque

SWITCH = 0.95  # the probe's judged run must beat this fraction of the current median
STALL = 4.0  # a run this many times its setting's recent best is a stall
MAX_GAP_S = 2.0  # probe at least this often...
MAX_PROBE_SHARE = 0.05  # ...unless probes would take more than this share of the time


class ThreadGuard:
    def __init__(self, full: int, *, window: int = 8, first_probe: int = 16,
                 max_probe: int = 2048):
        self.full = max(1, full)
        self.current = self.full
        self._times = {self.full: deque(maxlen=window), 1: deque(maxlen=window)}
        self._first, self._max = first_probe, max_probe
        self._interval = first_probe
        self._next = first_probe
        self._count = 0
        self._probe_step = 0  # 0: no probe; 1: the waking run; 2: the judged run
        self._probe_start = 0.0
        self._last_probe = 0.0
        self._spacing = 0.0  # the last probe's time / MAX_PROBE_SHARE

    @property
    def other(self) -> int:
        return 1 if self.current == self.full else self.full

    def threads(self, now: float) -> int:
        """Threads for the next run, started at time ``now`` (seconds)."""
        self._count += 1
        if self.full == 1:
            return 1
        if self._probe_step:
            return self.other
        since = now - self._last_probe
        due = ((self._count >= self._next and since >= self._spacing)
               or since >= max(MAX_GAP_S, self._spacing))
        if due and len(self._times[self.current]) >= 4:
            self._probe_step, self._probe_start = 1, now
            return self.other
        return self.current

    def record(self, threads: int, seconds: float, now: float) -> None:
        """The run with ``threads`` took ``seconds`` and ended at ``now``."""
        if self.full == 1:
            return
        recent = self._times[self.current]
        if self._probe_step == 1:  # the waking run: not judged
            self._probe_step = 2
            return
        if self._probe_step == 2:
            self._probe_step = 0
            self._last_probe = now
            self._spacing = (now - self._probe_start) / MAX_PROBE_SHARE
            if seconds < SWITCH * statistics.median(recent):
                self.current = threads
                self._times[threads].clear()
                self._interval = self._first
            else:
                self._interval = min(2 * self._interval, self._max)
            self._times[threads].append(seconds)
            self._next = self._count + self._interval
            return
        if threads == self.full and len(recent) >= 4 and seconds > STALL * min(recent):
            self._next = min(self._next, self._count + 1)  # a stall: try one thread soon
        recent.append(seconds)
