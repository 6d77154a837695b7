"""The native loader and bundles: x86_64 natively, aarch64 under qemu-aarch64 (the ARM proof)."""

import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from conftest import make_conv_model, ort_run, rel_err

import edgecc
from edgecc.cli import main
from edgecc.deploy.package import package_artifact

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
    assert names == ["README.txt", "bin/edgecc-run", "bin/run_model", "examples/run_model.c",
                     "include/edgecc_runtime.h", "lib/libedgecc_runtime.so", "lib/libtvm_ffi.so",
                     "lib/libtvm_runtime.so", "model.json", "model.so",
                     "model.x86_64-avx512.so", "run.sh"]
    on_disk = sum(p.stat().st_size for p in result.path.rglob("*")
                  if p.is_file() and not p.name.endswith(".verified"))
    assert result.total_bytes == on_disk  # what the bundle really takes
    assert f"({on_disk / 2**20:.2f} MiB)" in result.format()
    # the bundle's manifest is valid and matches its (stripped) library
    edgecc.build.cache.validate_artifact(result.path)


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
                           "this edgecc runtime is built for x86_64\n")
    assert _run([loader, "--help"]).stdout.startswith("usage: edgecc-run BUNDLE_DIR")


def _copy_bundle(result, tmp_path, name="b"):
    bundle = tmp_path / name
    shutil.copytree(result.path, bundle)
    manifest = json.loads((bundle / "model.json").read_text())
    libs = [manifest["library"], *(v["library"] for v in manifest["variants"])]
    return bundle, manifest, libs


def _both_refuse(bundle, message, *, verify=False):
    """The Python loader (API and ``edgecc run``) and edgecc-run refuse ``bundle`` with the same
    one-line ``message``, exit 1."""
    with pytest.raises(edgecc.ArtifactError) as e:
        edgecc.load(bundle, verify=verify)
    assert str(e.value) == message
    proc = _run([bundle / "bin" / "edgecc-run", bundle, *(["--verify"] if verify else [])])
    assert (proc.returncode, proc.stderr) == (1, f"error: {message}\n")


def test_both_loaders_refuse_a_truncated_library(x86_bundle, tmp_path, capsys):
    """An interrupted copy: the size in the manifest is checked on every load, before dlopen
    (which would die of SIGBUS)."""
    _, _, result = x86_bundle
    bundle, manifest, libs = _copy_bundle(result, tmp_path)
    assert manifest["library_bytes"] == (bundle / "model.so").stat().st_size
    for lib in libs:
        data = (bundle / lib).read_bytes()
        (bundle / lib).write_bytes(data[: len(data) // 2])
    picked = edgecc.load(result.path).build
    lib = next(v["library"] for v in manifest["variants"] if v["target"] == picked) \
        if picked != manifest["target"] else "model.so"
    full = (result.path / lib).stat().st_size
    message = (f"{bundle}: {lib} is {full // 2} bytes, the manifest says {full} (a truncated or "
               "replaced copy): copy the artifact again")
    _both_refuse(bundle, message)
    assert main(["run", str(bundle)]) == 1
    assert capsys.readouterr().err == f"error: {message}\n"


def test_both_loaders_hash_a_library_on_first_use_and_with_verify(x86_bundle, tmp_path):
    _, _, result = x86_bundle
    picked = edgecc.load(result.path).build
    bundle, manifest, _ = _copy_bundle(result, tmp_path)
    lib = next((v["library"] for v in manifest["variants"] if v["target"] == picked), "model.so")
    path = bundle / lib
    # same size, one byte changed, never loaded here: the first load hashes it
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    message = (f"{bundle}: {lib} does not match the sha256 in the manifest (a corrupted or "
               "replaced copy): copy the artifact again")
    _both_refuse(bundle, message)
    # an intact copy is hashed once: the stamp beside it (shared by both loaders) says so
    for loader in ("python", "native"):
        good, _, _ = _copy_bundle(result, tmp_path, f"good-{loader}")
        stamp = good / f".{lib}.verified"
        if loader == "python":
            edgecc.load(good)
        else:
            proc = _run([good / "bin" / "edgecc-run", good])
            assert proc.returncode == 0, proc.stderr
        sha = next(b.library_sha256 for b in edgecc.artifact.manifest.Manifest.read(good).builds()
                   if b.library == lib)
        st = (good / lib).stat()
        assert stamp.read_text() == f"{sha} {st.st_size} {st.st_mtime_ns} {st.st_ino}\n"
        # changed in place with size and mtime kept (a byte the loader never maps: the end of
        # the section headers; written without truncating, as this process has the library
        # mapped): trusted by the stamp, caught with --verify / verify=True
        with (good / lib).open("r+b") as f:
            f.seek(-1, 2)
            last = f.read(1)
            f.seek(-1, 2)
            f.write(bytes([last[0] ^ 0xFF]))
        os.utime(good / lib, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert edgecc.load(good).build == picked
        _both_refuse(good, message.replace(str(bundle), str(good)), verify=True)


def test_both_loaders_refuse_an_artifact_for_another_runtime(x86_bundle, tmp_path):
    from importlib import metadata

    _, _, result = x86_bundle
    bundle, manifest, _ = _copy_bundle(result, tmp_path)
    assert manifest["tvm_version"] == metadata.version("apache-tvm")
    manifest["tvm_version"] = "0.26.0"
    (bundle / "model.json").write_text(json.dumps(manifest))
    _both_refuse(bundle, f"artifact '{bundle}' was built for TVM runtime 0.26.0; this runtime is "
                         f"{metadata.version('apache-tvm')}: recompile it with this edgecc")


def test_c_example_embeds_the_model_and_matches_onnxruntime(x86_bundle, tmp_path):
    """bin/run_model (examples/run_model.c, built by edgecc package) links the C API only."""
    _, model, result = x86_bundle
    assert (result.path / "examples" / "run_model.c").read_text().count("edgecc_model_run") == 1
    x = np.random.default_rng(7).standard_normal((1, 3, 16, 16)).astype("float32")
    x.tofile(tmp_path / "x.bin")
    proc = _run([result.path / "bin" / "run_model", result.path, tmp_path / "x.bin", "--out",
                 tmp_path / "y", "--bench", "3"])
    assert proc.returncode == 0, proc.stderr
    picked = edgecc.load(result.path).build
    assert proc.stdout.startswith(f"build: {picked}\ninput x: float32[1,3,16,16]\n"
                                  "output y: float32[1,8,16,16]\n")
    assert "latency: mean" in proc.stdout
    ref = ort_run(model, {"x": x})[0]
    assert rel_err(np.fromfile(tmp_path / "y0.bin", dtype="float32").reshape(ref.shape),
                   ref) <= 1e-4
    # the library's checks reach the application as one message
    bundle, _, libs = _copy_bundle(result, tmp_path)
    for lib in libs:
        (bundle / lib).write_bytes((bundle / lib).read_bytes()[:1000])
    proc = _run([bundle / "bin" / "run_model", bundle])
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: {bundle}: "), proc.stderr
    assert "bytes, the manifest says" in proc.stderr


C_API_PROBE = r"""
import ctypes, sys, threading
import numpy as np
lib = ctypes.CDLL(sys.argv[1] + "/lib/libedgecc_runtime.so")
class Info(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_char_p), ("ndim", ctypes.c_int32),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("bytes", ctypes.c_size_t)]
lib.edgecc_last_error.restype = ctypes.c_char_p
lib.edgecc_model_build.restype = ctypes.c_char_p
m = ctypes.c_void_p()
print("missing", lib.edgecc_model_open(b"/nonexistent", None, ctypes.byref(m)),
      lib.edgecc_last_error().decode())
assert lib.edgecc_model_open(sys.argv[1].encode(), None, ctypes.byref(m)) == 0
i, o = Info(), Info()
assert lib.edgecc_model_input(m, 0, ctypes.byref(i)) == 0
assert lib.edgecc_model_output(m, 0, ctypes.byref(o)) == 0
print("info", i.name.decode(), i.dtype.decode(), [i.shape[k] for k in range(i.ndim)], i.bytes,
      o.name.decode(), o.bytes)
print("bad index", lib.edgecc_model_input(m, 5, ctypes.byref(i)), lib.edgecc_last_error().decode())
x = np.load(sys.argv[2])
ref = np.load(sys.argv[3])
small = np.zeros(4, "float32")
ins = (ctypes.c_void_p * 1)(x.ctypes.data)
cap = (ctypes.c_size_t * 1)(small.nbytes)
outs = (ctypes.c_void_p * 1)(small.ctypes.data)
print("too small", lib.edgecc_model_run(m, ins, outs, cap), lib.edgecc_last_error().decode())
bad = []
def work(seed):
    y = np.empty(ref.shape, "float32")
    o = (ctypes.c_void_p * 1)(y.ctypes.data)
    c = (ctypes.c_size_t * 1)(y.nbytes)
    for _ in range(20):  # one handle, four threads: runs are serialized, none corrupts another
        if lib.edgecc_model_run(m, ins, o, c) != 0 or np.abs(y - ref).max() > 1e-4 * np.abs(ref).max():
            bad.append(seed)
threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print("threads", len(bad))
lib.edgecc_model_close(m)
"""


def test_c_api_reports_errors_as_codes_and_serializes_threads(x86_bundle, tmp_path):
    """The C API from a process that has nothing else of TVM loaded (ctypes)."""
    _, model, result = x86_bundle
    x = np.random.default_rng(8).standard_normal((1, 3, 16, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", ort_run(model, {"x": x})[0])
    proc = subprocess.run([sys.executable, "-c", C_API_PROBE, str(result.path),
                           str(tmp_path / "x.npy"), str(tmp_path / "ref.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "missing 2 /nonexistent: no model.json (not an edgecc artifact directory)"
    assert lines[1] == "info x float32 [1, 3, 16, 16] 3072 y 8192"
    assert lines[2] == "bad index 1 edgecc_model_input: no input #5"
    assert lines[3] == "too small 1 edgecc_model_run: output #0 ('y') needs 8192 bytes, got 16"
    assert lines[4] == "threads 0"


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
    for f in ("bin/edgecc-run", "bin/run_model", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so",
              "lib/libedgecc_runtime.so", "model.so"):
        assert (bundle / f).read_bytes()[18] == 183, f  # EM_AARCH64
    np.save(tmp_path / "in.npy", example.numpy())
    proc = _run([QEMU, "-L", AARCH64_SYSROOT, bundle / "bin" / "edgecc-run", bundle,
                 "--input", f"input={tmp_path / 'in.npy'}", "--output", tmp_path / "out"])
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "out" / "output.npy")
    ref = ort_run(onnx_path, {"input": example.numpy()})[0]
    assert rel_err(got, ref) <= 1e-4
    # the C example, embedding the model through edgecc_runtime.h, under qemu too
    example.numpy().tofile(tmp_path / "in.bin")
    proc = _run([QEMU, "-L", AARCH64_SYSROOT, bundle / "bin" / "run_model", bundle,
                 tmp_path / "in.bin", "--out", tmp_path / "c-out"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("build: rpi4\n")
    got = np.fromfile(tmp_path / "c-out0.bin", dtype="float32").reshape(ref.shape)
    assert rel_err(got, ref) <= 1e-4


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
    """One manifest format, the same verdicts on both sides (edgecc/artifact/manifest.py and
    deploy/native/manifest.cc)."""
    _, _, result = x86_bundle
    bundle = tmp_path / "b"
    shutil.copytree(result.path, bundle)
    manifest = json.loads((bundle / "model.json").read_text())
    mutate(manifest)
    (bundle / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(edgecc.ArtifactError, match=phrase.replace("(", r"\(")):
        edgecc.artifact.manifest.Manifest.read(bundle)
    proc = _run([bundle / "bin" / "edgecc-run", bundle])
    assert proc.returncode == 1 and phrase in proc.stderr, proc.stderr
