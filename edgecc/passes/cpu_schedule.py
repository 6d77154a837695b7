"""Give kernels that have no tuned record a default CPU schedule instead of naive loops."""

from __future__ import annotations

NAME = "cpu-schedule"
DESCRIPTION = ("Default CPU schedules (dlight: GEMV, reductions) for kernels that have no tuned "
               "record; tuned kernels are left as they are.")


def run(mod, *, target):
    from tvm.s_tir import dlight as dl

    # dlight updates the module it is given in place: work on a copy, keep the pass pure
    return dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())(mod.clone())
