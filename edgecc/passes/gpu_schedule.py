"""Give every kernel a default GPU schedule (dlight: matmul, GEMV, reductions, fallback)."""

from __future__ import annotations

NAME = "gpu-schedule"
DESCRIPTION = "Give every kernel a default GPU schedule (dlight: matmul, GEMV, reductions, fallback)."


def run(mod, *, target):
    from tvm.s_tir import dlight as dl

    # dlight updates the module it is given in place: work on a copy, keep the pass pure
    return dl.ApplyDefaultSchedule(
        dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    )(mod.clone())
