"""The native loader and bundles: x86_64 natively, aarch64 under qemu-aarch64 (the ARM proof)."""

import json
import shutil
import subprocess
import tarfile

import numpy as np
import pytest
from conftest import make_conv_model, ort_run, rel_err

import edgecc
from edgecc.cli import main
from edgecc.package import package_artifact

QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
needs_arm = pytest.mark.skipif(
    QEMU is None or shutil.which("aarch64-linux-gnu-g++") is None,
    reason="needs qemu-user and g++-aarch64-linux-gnu (Debian packages; scripts/setup.sh)")


@pytest.fixture(scope="module")
def x86_bundle(tmp_path_factory):
    work = tmp_path_factory.mktemp("x86")
    model = make_conv_model()
    edgecc.compile(model, output=work / "art", use_cache=False)
    result = package_artifact(work / "art", work / "bundle", log=lambda m: None)
    return work, model, result


def _run(cmd):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)


def test_bundle_layout_and_footprint(x86_bundle):
    _, _, result = x86_bundle
    names = [n for n, _ in result.files]
    assert names == ["README.txt", "bin/edgecc-run", "lib/libtvm_ffi.so",
                     "lib/libtvm_runtime.so", "model.json", "model.so",
                     "model.x86_64-avx512.so", "run.sh"]
    assert result.total_bytes == sum(s for _, s in result.files)
    assert "total" in result.format() and "MiB" in result.format()
    # the bundle's manifest is valid and matches its (stripped) library
    edgecc.cache.validate_artifact(result.path)


def test_x86_bundle_runs_natively_and_matches_onnxruntime(x86_bundle, tmp_path):
    work, model, result = x86_bundle
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    proc = _run([result.path / "run.sh", "--input", f"x={tmp_path / 'x.npy'}", "--output",
                 tmp_path / "out", "--bench", "5"])
    assert proc.returncode == 0, proc.stderr
    assert "latency: mean" in proc.stdout and "p90" in proc.stdout
    got = np.load(tmp_path / "out" / "y.npy")
    assert rel_err(got, ort_run(model, {"x": x})[0]) <= 1e-4


def test_the_native_loader_runs_the_build_the_python_loader_picks(x86_bundle, tmp_path):
    """edgecc-run picks among the bundle's builds (x86_64, x86_64-avx512) by the CPU's
    features as edgecc.load does, runs the one --build names, and refuses the others."""
    _, model, result = x86_bundle
    x = np.random.default_rng(6).standard_normal((1, 3, 16, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    picked = edgecc.load(result.path).build
    loader = result.path / "bin" / "edgecc-run"
    proc = _run([loader, result.path, "--input", f"x={tmp_path / 'x.npy'}"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"running the {picked} build\n")
    for build in {"x86_64", picked}:
        out = tmp_path / build
        proc = _run([loader, result.path, "--build", build, "--input", f"x={tmp_path / 'x.npy'}",
                     "--output", out])
        assert proc.returncode == 0 and f"running the {build} build" in proc.stdout, proc.stderr
        assert rel_err(np.load(out / "y.npy"), ort_run(model, {"x": x})[0]) <= 1e-4
    proc = _run([loader, result.path, "--build", "rpi4"])
    assert proc.returncode == 1
    assert proc.stderr == (f"error: artifact '{result.path}' has no 'rpi4' build (it has: "
                           "x86_64-avx512, x86_64)\n")


def test_native_loader_errors(x86_bundle, tmp_path):
    _, _, result = x86_bundle
    loader = result.path / "bin" / "edgecc-run"
    np.save(tmp_path / "wrong.npy", np.zeros((1, 3, 16, 16), "float64"))
    (tmp_path / "junk.npy").write_text("junk")
    cases = [
        (["--input", f"x={tmp_path / 'wrong.npy'}"],
         "error: input 'x' has dtype float64, expected float32 (the model takes: "
         "x: float32[1,3,16,16])"),
        (["--input", f"x={tmp_path / 'junk.npy'}"],
         f"error: input file '{tmp_path / 'junk.npy'}' is not a valid .npy file (bad magic)"),
        (["--input", f"x={tmp_path / 'none.npy'}"], f"error: cannot read '{tmp_path / 'none.npy'}'"),
        (["--input", f"z={tmp_path / 'wrong.npy'}"], "error: missing input(s) x; unknown input(s) z"),
        (["--bench", "zero"], "error: --bench expects an integer >= 1, got 'zero'"),
    ]
    for args, message in cases:
        proc = _run([loader, result.path, *args])
        assert proc.returncode == 1 and proc.stderr.startswith(message), (args, proc.stderr)
    proc = _run([loader, tmp_path])
    assert proc.returncode == 1
    assert proc.stderr == f"error: {tmp_path}: no model.json (not an edgecc artifact directory)\n"
    # wrong architecture: refused before loading anything
    fake = tmp_path / "fake"
    shutil.copytree(result.path, fake)
    manifest = json.loads((fake / "model.json").read_text())
    manifest.update(arch="aarch64", target="rpi4")
    (fake / "model.json").write_text(json.dumps(manifest))
    proc = _run([loader, fake])
    assert proc.returncode == 1
    assert proc.stderr == (f"error: artifact '{fake}' was compiled for aarch64 (target rpi4); "
                           "this edgecc-run is built for x86_64\n")
    assert _run([loader, "--help"]).stdout.startswith("usage: edgecc-run BUNDLE_DIR")


def test_package_cli_refuses_existing_output_and_cuda(x86_bundle, tmp_path, capsys):
    work, _, result = x86_bundle
    assert main(["package", str(work / "art"), "-o", str(result.path)]) == 1
    assert "already exists (use --force" in capsys.readouterr().err
    cuda = tmp_path / "cuda"
    shutil.copytree(work / "art", cuda)
    m = json.loads((cuda / "model.json").read_text())
    m["device"] = "cuda"
    (cuda / "model.json").write_text(json.dumps(m))
    assert main(["package", str(cuda), "-o", str(tmp_path / "b")]) == 1
    assert "the native loader runs CPU artifacts only" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@needs_arm
@pytest.mark.slow
def test_aarch64_bundle_runs_under_qemu_and_matches_onnxruntime(tmp_path, capsys):
    """The ARM proof: an example CNN compiled for a Raspberry Pi 4, bundled with the aarch64
    runtime from the official aarch64 wheels, run by the native loader under qemu-aarch64."""
    zoo = pytest.importorskip("zoo")
    model, example = zoo.build("mobilenetv2")
    onnx_path = tmp_path / "mnv2.onnx"
    zoo.export_onnx(model, example, onnx_path)
    assert main(["compile", str(onnx_path), "-t", "rpi4", "-o", str(tmp_path / "art"), "-q"]) == 0
    assert main(["package", str(tmp_path / "art"), "-o", str(tmp_path / "mnv2-rpi4.tar.gz")]) == 0
    printed = capsys.readouterr().out
    assert "lib/libtvm_runtime.so" in printed and "total" in printed
    with tarfile.open(tmp_path / "mnv2-rpi4.tar.gz") as tar:
        tar.extractall(tmp_path / "device", filter="data")
    bundle = tmp_path / "device" / "mnv2-rpi4"
    for f in ("bin/edgecc-run", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so", "model.so"):
        assert (bundle / f).read_bytes()[18] == 183, f  # EM_AARCH64
    np.save(tmp_path / "in.npy", example.numpy())
    proc = _run([QEMU, "-L", AARCH64_SYSROOT, bundle / "bin" / "edgecc-run", bundle,
                 "--input", f"input={tmp_path / 'in.npy'}", "--output", tmp_path / "out"])
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "out" / "output.npy")
    assert rel_err(got, ort_run(onnx_path, {"input": example.numpy()})[0]) <= 1e-4


@pytest.mark.parametrize("mutate,phrase", [
    (lambda m: m.update(format="other"), "not an edgecc manifest"),
    (lambda m: m.update(format_version=2), "manifest format_version 2 is not supported"),
    (lambda m: m["inputs"][0].update(dtype="complex64"), "has unsupported dtype 'complex64'"),
    (lambda m: m["inputs"][0].update(shape=[1, -3]), "has a negative dimension"),
    (lambda m: m.update(device="tpu"), "unknown device 'tpu'"),
    (lambda m: m.pop("outputs"), "malformed manifest"),
    (lambda m: m["variants"][0].pop("library"), "malformed manifest"),
])
def test_python_and_native_loaders_validate_the_manifest_alike(x86_bundle, tmp_path, mutate,
                                                                phrase):
    """One manifest format, the same verdicts on both sides (edgecc/manifest.py and
    native/edgecc_run.cc)."""
    _, _, result = x86_bundle
    bundle = tmp_path / "b"
    shutil.copytree(result.path, bundle)
    manifest = json.loads((bundle / "model.json").read_text())
    mutate(manifest)
    (bundle / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(edgecc.ArtifactError, match=phrase.replace("(", r"\(")):
        edgecc.manifest.Manifest.read(bundle)
    proc = _run([bundle / "bin" / "edgecc-run", bundle])
    assert proc.returncode == 1 and phrase in proc.stderr, proc.stderr
