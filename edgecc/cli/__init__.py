"""The ``edgecc`` command line. Each subcommand registers its parser and a thin ``drive_<cmd>``
that calls the typed API; only :func:`main` exits. One module per verb group."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .._version import __version__
from ..errors import EdgeccError
from . import compile as _compile
from . import compress as _compress
from . import parallel as _parallel
from . import run as _run
from . import tune as _tune
from .common import _err

REGISTER = (_compile.register_compile, _tune.register_tune, _compile.register_targets,
            _run.register_run, _run.register_bench, _run.register_verify, _run.register_package,
            _compress.register_prune, _compress.register_distill, _parallel.register_partition,
            _parallel.register_pipeline, _run.register_rpc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecc", description="Compile trained models (ONNX) with TVM into deployable "
        "artifacts for edge targets (x86_64, aarch64 boards, CUDA).")
    parser.add_argument("--version", action="version", version=f"edgecc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTER:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.drive(args)
    except EdgeccError as e:
        _err(str(e))
        return 1
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
