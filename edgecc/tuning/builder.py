"""The builder function MetaSchedule's worker processes call for each candidate.

TVM's default builder imports ``tvm.s_tir.tensor_intrin`` in every fresh worker (about 20-30 s
on 2 cores), so every build hit the builder timeout. This one lowers with ``tvm.driver.build``
after removing the weight layout-rewrite blocks, skipping that import: well under a second.
Kept in a module of its own so a worker imports nothing else of edgecc's.
"""


def fast_build(mod, target, _params):
    from tvm.driver import build as tvm_build  # noqa: PLC0415
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock  # noqa: PLC0415

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _export_so(rt_mod, compiler: str) -> str:
    import os  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from tvm.support import cc  # noqa: PLC0415

    path = os.path.join(tempfile.mkdtemp(), "candidate.so")
    rt_mod.export_library(path, fcompile=cc.cross_compiler(compiler))
    return path


def cross_export_aarch64(rt_mod) -> str:
    """A candidate as an aarch64 shared object, linked here (RPC devices need no compiler)."""
    return _export_so(rt_mod, "aarch64-linux-gnu-g++")


def export_x86_64(rt_mod) -> str:
    """A candidate as an x86_64 shared object, linked here: TVM's default exports a .tar that the
    device must link itself, which a device without a compiler (edgecc-run serve) cannot do."""
    return _export_so(rt_mod, "g++")
