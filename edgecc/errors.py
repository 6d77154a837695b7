"""The exception family of edgecc.

Every error a user can cause (bad model, unknown target, missing toolchain, wrong input) is an
``EdgeccError``; the CLI prints ``error: <message>`` and exits non-zero for these. Anything else
escaping edgecc is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgeccError(Exception):
    """Root of every error edgecc reports to the user."""


class ModelError(EdgeccError):
    """The model file or object cannot be read or imported."""


class UnsupportedOperatorError(ModelError):
    """The model uses operators the importer cannot translate."""

    def __init__(self, unsupported: dict[str, list[str]]):
        self.unsupported = unsupported
        parts = [f"{op} (nodes: {', '.join(nodes[:5])}{', ...' if len(nodes) > 5 else ''})"
                 for op, nodes in sorted(unsupported.items())]
        super().__init__(
            f"{len(unsupported)} unsupported operator type(s): " + "; ".join(parts))


class CompileError(EdgeccError):
    """A compile stage inside TVM failed on the model (named: stage, and op where known)."""

    @staticmethod
    def describe(e: BaseException) -> str:
        """``Type: last line`` of a TVM error (its message ends with the check that failed)."""
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        return f"{type(e).__name__}: {lines[-1] if lines else ''}".rstrip(": ")

    @classmethod
    def from_tvm(cls, where: str, e: BaseException, *, op: str | None = None) -> CompileError:
        return cls(f"{where} failed{f' at {op}' if op else ''}: {cls.describe(e)}")


class TargetError(EdgeccError):
    """Unknown or malformed target."""


class ToolchainError(EdgeccError):
    """A compiler or tool the target needs is not installed."""


class TuningLogError(EdgeccError):
    """A tuning log is missing, malformed or made for another target."""


class InputError(EdgeccError):
    """Inputs given at run time do not match the artifact's manifest."""


class ArtifactError(EdgeccError):
    """An artifact directory is missing, incomplete or inconsistent."""


class OutputExistsError(EdgeccError):
    """The output path exists and --force was not given."""


class VerificationError(EdgeccError):
    """Outputs differ from the reference beyond tolerance."""
