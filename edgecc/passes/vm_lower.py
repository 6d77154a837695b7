"""Lower to the Relax VM: runtime builtins, shape computations, global symbols."""

from __future__ import annotations

NAME = "vm-lower"
DESCRIPTION = "Lower to the Relax VM: runtime builtins, shape computations, global symbols."


def run(mod, *, target):
    from tvm import relax

    for p in (relax.transform.LowerRuntimeBuiltin(), relax.transform.ComputePrimValue(),
              relax.transform.VMShapeLower(), relax.transform.AttachGlobalSymbol()):
        mod = p(mod)
    return mod
