"""A helper shared by the passes that rewrite Relax calls with a ``PyExprMutator``."""

from __future__ import annotations


def each_function(mod, rewriter):
    """Every Relax function of ``mod`` through ``rewriter`` (a ``PyExprMutator`` made for
    ``mod``); the module its builder holds afterwards (PrimFuncs it emitted included)."""
    from tvm import relax  # noqa: PLC0415

    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
