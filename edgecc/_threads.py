"""Worker-thread default for the TVM runtime (no TVM imports here).

Without TVM_NUM_THREADS, TVM's runtime uses half of the logical CPUs on x86 (it assumes
hyper-threading), so on a 2-vCPU machine every kernel ran on one thread. edgecc sets
TVM_NUM_THREADS to the number of physical cores it may use, unless the user set it (or
OMP_NUM_THREADS). It must happen before TVM creates its thread pool, so it runs when edgecc is
imported; the native loader does the same in C++.
"""

from __future__ import annotations

import os


def physical_cores() -> int:
    """Physical cores available to this process (hyper-thread siblings counted once)."""
    try:
        allowed = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    groups = set()
    for cpu in allowed:
        path = f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
        try:
            with open(path) as f:
                groups.add(f.read().strip())
        except OSError:
            groups.add(str(cpu))
    return max(1, len(groups))


def set_default_threads() -> None:
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(physical_cores())


__all__ = ["physical_cores", "set_default_threads"]
