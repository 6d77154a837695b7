"""Rewrite training-style ops for inference (batch_norm, layer_norm, dropout) into plain arithmetic."""

from __future__ import annotations

NAME = "decompose-inference"
DESCRIPTION = "Rewrite training-style ops for inference (batch_norm, layer_norm, dropout) into plain arithmetic."


def run(mod, *, target):
    from tvm import relax

    return relax.transform.DecomposeOpsForInference()(mod)
