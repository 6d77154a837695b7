"""Cross targets: aarch64 shared objects linked by the cross toolchain, CUDA kernels by nvcc."""

import shutil
import subprocess

import pytest
from conftest import make_conv_model

import edgecc
from edgecc import ToolchainError
from edgecc.build import library as build
from edgecc.targets import get_target

EM_AARCH64 = 183
needs_cross = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                                 reason="aarch64-linux-gnu-g++ not installed "
                                 "(Debian package g++-aarch64-linux-gnu)")
needs_nvcc = pytest.mark.skipif(build.find_nvcc() is None, reason="nvcc not installed")


def _elf_machine(path) -> int:
    data = path.read_bytes()[:20]
    assert data[:4] == b"\x7fELF"
    return int.from_bytes(data[18:20], "little")


def _dynamic_symbols(path) -> set[str]:
    nm = shutil.which("aarch64-linux-gnu-nm") or "nm"
    out = subprocess.run([nm, "-D", "--defined-only", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


@needs_cross
@pytest.mark.parametrize("target", ["aarch64-linux-gnu", "rpi4", "jetson-orin-cpu"])
def test_aarch64_artifact_is_an_aarch64_elf_with_the_tvm_entry_points(tmp_path, target):
    r = edgecc.compile(make_conv_model(), target=target, output=tmp_path / "a")
    lib = tmp_path / "a" / "model.so"
    assert _elf_machine(lib) == EM_AARCH64
    symbols = _dynamic_symbols(lib)
    assert "__tvm_ffi__library_bin" in symbols  # VM executable + weights
    # conv+bn+relu fused into one kernel (a transferred schedule may add the weight-packing
    # helper that prepack-weights ran at compile time)
    kernels = {s for s in symbols if s.startswith("__tvm_ffi_fused_")
               and not s.endswith("_weight_prepack")}
    assert len(kernels) == 1, kernels
    assert r.manifest.arch == "aarch64" and r.manifest.tvm_target["mtriple"] == "aarch64-linux-gnu"


def test_missing_cross_compiler_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError) as e:
        edgecc.compile(make_conv_model(), target="rpi4", output=tmp_path / "a")
    assert str(e.value) == (
        "target 'rpi4' needs the cross compiler 'aarch64-linux-gnu-g++', which is not on PATH; "
        "install the Debian package g++-aarch64-linux-gnu "
        "(apt-get install g++-aarch64-linux-gnu)")
    assert not (tmp_path / "a").exists()


def test_missing_nvcc_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(build, "CUDA_HOME_CANDIDATES", (str(tmp_path / "no-cuda"),))
    with pytest.raises(ToolchainError, match="target 'cuda-sm75' needs nvcc .the CUDA toolkit."):
        edgecc.compile(make_conv_model(), target="cuda-sm75", output=tmp_path / "c")
    assert not (tmp_path / "c").exists()


@needs_nvcc
@pytest.mark.parametrize("target,sm,elf_machine", [("cuda-sm75", 75, 62),
                                                   pytest.param("cuda-sm87", 87, EM_AARCH64,
                                                                marks=needs_cross)])
def test_cuda_artifact_carries_kernels_compiled_by_nvcc(tmp_path, target, sm, elf_machine):
    r = edgecc.compile(make_conv_model(), target=target, output=tmp_path / "c")
    assert r.manifest.device == "cuda"
    assert _elf_machine(tmp_path / "c" / "model.so") == elf_machine  # host code for the board
    fatbin = tmp_path / "c" / r.manifest.options["cuda_fatbin"]
    assert ("cubin", sm) in build.fatbin_entries(fatbin.read_bytes())
    assert b"__global__" in (tmp_path / "c" / "model.so").read_bytes()  # kernels in the library


@needs_nvcc
def test_cuda_artifact_runs_only_with_a_gpu(tmp_path):
    edgecc.compile(make_conv_model(), target="cuda-sm75", output=tmp_path / "c")
    try:
        m = edgecc.load(tmp_path / "c")
    except edgecc.ArtifactError as e:
        assert "needs a CUDA GPU" in str(e)
        pytest.skip(f"no CUDA GPU on this machine: the artifact was built but not run ({e})")
    from conftest import ort_run, rel_err
    from edgecc.runtime import random_inputs

    feed = random_inputs(m.inputs)
    assert rel_err(m.run(feed)["y"], ort_run(make_conv_model(), feed)[0]) <= 1e-4


def test_fatbin_parser_rejects_garbage():
    with pytest.raises(ValueError, match="bad magic"):
        build.fatbin_entries(b"\x00" * 64)


def test_targets_resolve_for_every_cpu_board():
    for name in ("rpi4", "rpi5", "jetson-orin-cpu"):
        t = get_target(name)
        assert t.cross_package == "g++-aarch64-linux-gnu" and t.arch == "aarch64"
