"""The runtime a device uses: ``m = edgecc.runtime.load(dir); outputs = m.run({...})``.

``model`` loads an artifact with the TVM *runtime* only (never ``tvm``'s compiler) and runs it;
``loadguard`` picks the thread count from the run times it sees (steady on a busy CPU).
"""

from __future__ import annotations

from .model import (
    ALIGNMENT,
    BenchmarkResult,
    Model,
    aligned,
    check_inputs,
    choose_build,
    load,
    random_inputs,
    runnable_builds,
    runtime_library_path,
    summarize,
)

__all__ = ["ALIGNMENT", "BenchmarkResult", "Model", "aligned", "check_inputs", "choose_build",
           "load", "random_inputs", "runnable_builds", "runtime_library_path", "summarize"]
