"""Worker-thread default for the TVM runtime (no TVM imports here).

Without TVM_NUM_THREADS, TVM's runtime uses half of the logical CPUs on x86 (it assumes
hyper-threading), so on a 2-vCPU machine every kernel ran on one thread. edgecc sets
TVM_NUM_THREADS to the number of physical cores it may use, unless the user set it (or
OMP_NUM_THREADS). It must happen before TVM creates its thread pool, so it runs when edgecc is
imported; the native loader does the same in C++.

Worker threads are not pinned to cores (``TVM_BIND_THREADS=0``) unless the user asks for it
(``EDGECC_BIND_THREADS=1``, or ``TVM_BIND_THREADS`` set): pinned, TVM binds every worker and the
*calling* thread to one core each, so on a busy CPU (an edge device always is: camera, network,
UI) a run waits for its worker's one core while another is free, and the caller's own thread
stays bound to core 0 after the run (benchmarks/bench_load.py; docs/runtime.md).
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
    if "TVM_BIND_THREADS" not in os.environ:
        os.environ["TVM_BIND_THREADS"] = os.environ.get("EDGECC_BIND_THREADS", "0")


__all__ = ["physical_cores", "set_default_threads"]
