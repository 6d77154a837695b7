"""The package carries its data (targets, shipped logs, native loader sources), and the device
runtime stays light: loading and running an artifact imports none of the compiler's stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import edgecc
from edgecc.deploy import native
from edgecc import targets
from edgecc.schedules import tuning_log


def test_targets_logs_and_native_sources_are_package_data():
    package = Path(edgecc.__file__).resolve().parent
    assert targets.targets_dir() == package / "targets"
    assert (package / "targets" / "x86_64.json").is_file()
    assert tuning_log.shipped_root() == package / "tuning_logs"
    assert tuning_log.shipped_logs(targets.get_target("x86_64"))  # found where a wheel has them
    assert native.NATIVE_DIR == package / "deploy" / "native"
    assert (native.NATIVE_DIR / "main.cc").is_file() and (native.NATIVE_DIR / "edgecc_run.h").is_file()


def test_pyproject_ships_the_package_data_and_no_cuda_xgboost():
    import tomllib

    meta = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    package = Path(edgecc.__file__).resolve().parent
    shipped = set()
    for name, patterns in meta["tool"]["setuptools"]["package-data"].items():
        where = package.parent.joinpath(*name.split("."))
        shipped |= {p for pattern in patterns for p in where.glob(pattern)}
    for sub in ("targets", "tuning_logs", "deploy/native"):
        on_disk = {p for p in (package / sub).rglob("*") if p.is_file()
                   and "__pycache__" not in p.parts and p.suffix != ".py"}
        assert on_disk <= shipped, sorted(str(p) for p in on_disk - shipped)
    deps = meta["project"]["dependencies"]
    linux_x86 = [d for d in deps if d.startswith("xgboost")
                 and "platform_machine == 'x86_64'" in d]
    assert linux_x86 == [d for d in deps if d.startswith("xgboost-cpu==")]


def test_loading_and_running_an_artifact_imports_no_compiler_stack(tmp_path):
    from conftest import make_conv_model

    edgecc.compile(make_conv_model(), output=tmp_path / "a", use_cache=False,
                   isa_variants=False)
    code = (
        "import sys, numpy as np\n"
        "import edgecc.runtime as r\n"
        f"m = r.load({str(tmp_path / 'a')!r})\n"
        "m.run(r.random_inputs(m.inputs))\n"
        "print(sorted(k for k in ('torch', 'onnx', 'tvm.relax', 'tvm', 'xgboost', 'onnxruntime')"
        " if k in sys.modules))\n"
        "import torch\n"  # torch stays importable after the loader kept it out of tvm_ffi
        "print(torch.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "torch"]
