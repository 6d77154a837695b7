"""edgecc: compile trained models with TVM Relax into deployable artifacts for edge targets.

The public API is re-exported here. Importing ``edgecc`` (or ``edgecc.runtime``) does not import
TVM's compiler: compile-side modules import it only when they run.
"""

from __future__ import annotations

from ._threads import set_default_threads
from .errors import (
    ArtifactError,
    EdgeccError,
    InputError,
    ModelError,
    OutputExistsError,
    TargetError,
    ToolchainError,
    TuningLogError,
    UnsupportedOperatorError,
    VerificationError,
)

from ._version import __version__

set_default_threads()  # before TVM creates its thread pool (see edgecc/_threads.py)

__all__ = [
    "ArtifactError", "EdgeccError", "InputError", "ModelError", "OutputExistsError",
    "TargetError", "ToolchainError", "TuningLogError", "UnsupportedOperatorError", "VerificationError",
    "compile", "load", "verify", "prune", "distill", "get_target", "list_targets", "__version__",
]


def compile(model, **kwargs):  # noqa: A001  (mirrors tvm.compile / the CLI verb)
    """Compile a model; see :func:`edgecc.build.compiler.compile_model`."""
    from .build.compiler import compile_model  # noqa: PLC0415

    return compile_model(model, **kwargs)


def load(path, **kwargs):
    """Load a compiled artifact directory; see :func:`edgecc.runtime.load`."""
    from .runtime import load as _load  # noqa: PLC0415

    return _load(path, **kwargs)


def verify(artifact, model, **kwargs):
    """Compare an artifact against ONNX Runtime; see :func:`edgecc.runtime.verify.verify_artifact`."""
    from .runtime.verify import verify_artifact  # noqa: PLC0415

    return verify_artifact(artifact, model, **kwargs)


def prune(model, **kwargs):
    """Prune an ``onnx.ModelProto``; see :func:`edgecc.compress.prune.prune`."""
    from .compress.prune import prune as _prune  # noqa: PLC0415

    return _prune(model, **kwargs)


def distill(teacher, student, **kwargs):
    """Knowledge distillation of ONNX models; see :func:`edgecc.compress.distill.distill`."""
    from .compress.distill import distill as _distill  # noqa: PLC0415

    return _distill(teacher, student, **kwargs)


def get_target(name):
    from .targets import get_target as _get  # noqa: PLC0415

    return _get(name)


def list_targets():
    from .targets import list_targets as _list  # noqa: PLC0415

    return _list()
