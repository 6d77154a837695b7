import json
import subprocess
import sys

import numpy as np
import pytest

import edgecc
from edgecc import ArtifactError, InputError
from edgecc.runtime import aligned, load, summarize


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from conftest import make_conv_model

    out = tmp_path_factory.mktemp("rt") / "conv"
    edgecc.compile(make_conv_model(), output=out, use_cache=False)
    return out


def test_wrong_inputs_are_named(artifact):
    m = load(artifact)
    with pytest.raises(InputError) as e:
        m.run({"x": np.zeros((1, 3, 16, 15), "float64"), "z": 1})
    assert str(e.value) == (
        "unknown input(s) z; input 'x' has shape (1, 3, 16, 15), expected (1, 3, 16, 16); "
        "input 'x' has dtype float64, expected float32 (the model takes: x: float32[1,3,16,16])")
    with pytest.raises(InputError, match=r"^missing input\(s\) x"):
        m.run({})


def test_inputs_of_any_alignment_and_layout_give_the_same_outputs_as_ort(artifact):
    """run() hands aligned contiguous arrays over as they are and copies the others into a
    staging buffer kept per input: every kind gives ORT's answer, and a staging buffer never
    returns an earlier run's input."""
    from conftest import make_conv_model, ort_run, rel_err

    m = load(artifact)
    rng = np.random.default_rng(3)
    backing = np.empty(2 * 3 * 16 * 16 + 64, "float32")
    start = (-backing.ctypes.data % 64) // 4
    for offset in (0, 1, 4, 1):  # aligned, then misaligned by 4 and 16 bytes, 4 again
        x = backing[start + offset:start + offset + 3 * 16 * 16].reshape(1, 3, 16, 16)
        x[...] = rng.standard_normal(x.shape)
        assert (x.ctypes.data % 64 == 0) == (offset == 0)
        ref = ort_run(make_conv_model(), {"x": x})[0]
        assert rel_err(m.run(x=x)["y"], ref) < 1e-5
    wide = rng.standard_normal((1, 3, 16, 32)).astype("float32")
    strided = wide[..., ::2]
    assert not strided.flags.c_contiguous
    assert rel_err(m.run(x=strided)["y"], ort_run(make_conv_model(), {"x": strided.copy()})[0]) < 1e-5


def test_benchmark_reports_percentiles(artifact):
    r = load(artifact).benchmark(repeat=7, number=3)
    assert r.repeat == 7 and r.number == 3
    assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.max_ms
    assert r.min_ms <= r.mean_ms <= r.max_ms


def test_profile_times_every_kernel_of_the_model_inside_it(artifact):
    """Each kernel of the model (as the tuner names it) is timed in the run, under its name or
    the name prepack-weights gave it; VM builtins are timed too but map to no kernel."""
    from conftest import make_conv_model

    from edgecc.tuning.selection import kernel_times
    from edgecc.targets import get_target
    from edgecc.tuning.tune import kernel_workloads, tuning_module

    profile = load(artifact).profile_kernels(runs=5)
    assert all(t > 0 for t in profile.values())
    _, mod = tuning_module(make_conv_model(), get_target("x86_64"))
    names = kernel_workloads(mod)
    assert len(names) == 3  # transpose to NHWC, conv + bias + relu, transpose back
    assert kernel_times(profile, names).keys() == set(names.values())
    with pytest.raises(InputError, match="^runs must be at least 1$"):
        load(artifact).profile_kernels(runs=0)


def test_the_loader_runs_the_best_build_the_cpu_has_every_feature_of():
    from edgecc.artifact.manifest import Manifest, Variant
    from edgecc.runtime import choose_build, runnable_builds

    base = ("avx", "avx2", "fma")
    m = Manifest(model_name="m", model_sha256="0", target="x86_64", arch="x86_64",
                 device="cpu", tvm_target={}, tvm_version="0", edgecc_version="0", inputs=(),
                 outputs=(), passes=(), library_sha256="b", cpu_features=base,
                 variants=(Variant("x86_64-avx512", "model.x86_64-avx512.so", "v",
                                   (*base, "avx512f", "avx512bw")),))
    skylake = {*base, "avx512f", "avx512bw", "sse2"}
    assert choose_build(m, skylake) == ("x86_64-avx512", "model.x86_64-avx512.so", "v")
    assert choose_build(m, {*base, "avx512f"}) == ("x86_64", "model.so", "b")  # no BW
    assert choose_build(m, skylake, build="x86_64") == ("x86_64", "model.so", "b")
    assert choose_build(m, set()) == ("x86_64", "model.so", "b")  # unknown CPU: the base
    assert choose_build(m, set(), build="x86_64-avx512")[0] == "x86_64-avx512"
    with pytest.raises(ArtifactError) as e:
        choose_build(m, {"avx", "sse2"}, source="artifact 'a'")
    assert str(e.value) == "this CPU lacks avx2, fma, which the x86_64 build of artifact 'a' needs"
    with pytest.raises(ArtifactError) as e:
        choose_build(m, set(base), build="x86_64-avx512", source="artifact 'a'")
    assert str(e.value) == ("this CPU lacks avx512f, avx512bw, which the x86_64-avx512 build of "
                            "artifact 'a' needs")
    assert runnable_builds(m, skylake) == (("x86_64-avx512", "x86_64"), ())
    assert runnable_builds(m, set()) == (("x86_64",), (
        "x86_64-avx512 (this CPU's features are unknown)",))
    assert runnable_builds(m, set(base)) == (("x86_64",), (
        "x86_64-avx512 (this CPU lacks avx512f, avx512bw, which the x86_64-avx512 build of the "
        "artifact needs)",))
    with pytest.raises(ArtifactError) as e:
        choose_build(m, skylake, build="aarch64", source="artifact 'a'")
    assert str(e.value) == "artifact 'a' has no 'aarch64' build (it has: x86_64-avx512, x86_64)"


def test_api_functions_stay_functions_once_their_modules_are_imported():
    import importlib

    modules = {"verify": "edgecc.runtime.verify", "prune": "edgecc.compress.prune",
               "distill": "edgecc.compress.distill", "compile": "edgecc.build.compiler",
               "load": "edgecc.runtime.model"}
    for name, module in modules.items():
        importlib.import_module(module)
        assert callable(getattr(edgecc, name)) and not isinstance(getattr(edgecc, name),
                                                                  type(importlib)), name


def test_summarize_math():
    r = summarize([0.001, 0.002, 0.003, 0.004], number=1)
    assert r.mean_ms == pytest.approx(2.5) and r.p50_ms == pytest.approx(2.5)
    assert r.p90_ms == pytest.approx(3.7) and r.min_ms == 1.0 and r.max_ms == 4.0


def test_aligned_copies_only_when_needed():
    a = aligned(np.arange(10, dtype="float32")[1:])
    assert a.ctypes.data % 64 == 0 and a.tolist() == list(range(1, 10))
    assert aligned(a) is a


def test_runtime_import_does_not_load_the_compiler(artifact):
    code = ("import sys, numpy as np, edgecc.runtime as rt\n"
            f"m = rt.load({str(artifact)!r})\n"
            "m.run(x=np.ones((1,3,16,16), 'float32'))\n"
            "print(sorted(k for k in sys.modules if k == 'tvm' or k.startswith('tvm.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_artifact_errors(tmp_path, artifact):
    with pytest.raises(ArtifactError, match="does not exist"):
        load(tmp_path / "missing")
    bad = tmp_path / "arm"
    bad.mkdir()
    manifest = json.loads((artifact / "model.json").read_text())
    manifest["arch"] = "aarch64"
    manifest["target"] = "rpi4"
    manifest["variants"] = []  # the base build only, whatever this CPU has
    (bad / "model.json").write_text(json.dumps(manifest))
    (bad / "model.so").write_bytes(b"")
    with pytest.raises(ArtifactError, match="compiled for aarch64 .target rpi4.; this machine is "
                       "x86_64: run it on an aarch64 device"):
        load(bad)
    (bad / "model.so").unlink()
    manifest.update(arch="x86_64", target="x86_64")
    (bad / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="model.so is missing"):
        load(bad)


def test_default_thread_count_is_the_physical_cores_unless_set():
    """TVM alone uses half the logical CPUs on x86 (1 thread on a 2-vCPU machine)."""
    import os

    from edgecc._threads import physical_cores

    code = "import os, edgecc; print(os.environ['TVM_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    # the physical cores this process may run on, counted by lscpu (util-linux), not by edgecc
    rows = subprocess.run(["lscpu", "-p=CPU,CORE,SOCKET"], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    allowed = os.sched_getaffinity(0)
    cores = {tuple(r.split(",")[1:]) for r in rows
             if r and not r.startswith("#") and int(r.split(",")[0]) in allowed}
    assert out == str(len(cores)) == str(physical_cores())
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, TVM_NUM_THREADS="3"),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "3"


def test_recompiling_into_the_same_directory_loads_the_new_library(tmp_path):
    """dlopen returns the already-loaded library for a path it has seen: the runtime must not
    run stale code after a recompile into the same directory."""
    import onnx
    from conftest import make_conv_model, ort_run, rel_err

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    out = tmp_path / "a"
    for seed in (0, 1):
        model = make_conv_model(seed=seed)
        onnx.save(model, tmp_path / f"m{seed}.onnx")
        edgecc.compile(tmp_path / f"m{seed}.onnx", output=out, force=True)
        got = load(out).run(x=x)["y"]
        assert rel_err(got, ort_run(model, {"x": x})[0]) < 1e-4


def test_running_a_model_pins_no_thread_to_a_core(tmp_path):
    """TVM pins its worker threads to cores unless TVM_BIND_THREADS=0, which edgecc sets by
    default (EDGECC_BIND_THREADS=1 pins): after runs, every thread of the process, the caller's
    and TVM's workers, may still run on every CPU the process may."""
    import os

    from conftest import make_conv_model

    edgecc.compile(make_conv_model(), output=tmp_path / "a", use_cache=False,
                   isa_variants=False)
    code = ("import os, edgecc.runtime as r\n"
            f"m = r.load({str(tmp_path / 'a')!r})\n"
            "for _ in range(3): m.run(r.random_inputs(m.inputs))\n"
            "print(len(os.listdir('/proc/self/task')), sorted({next(l.split()[1] for l in "
            "open(f'/proc/self/task/{t}/status') if l.startswith('Cpus_allowed_list')) "
            "for t in os.listdir('/proc/self/task')}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_BIND_THREADS",
                                                          "EDGECC_BIND_THREADS")}
    runs = {}
    for bind in ("", "1"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, env={**env, "EDGECC_BIND_THREADS": bind} if bind
                             else env)
        assert out.returncode == 0, out.stderr
        runs[bind] = out.stdout.split()
    cpus = sorted(os.sched_getaffinity(0))
    allowed = f"{cpus[0]}-{cpus[-1]}" if len(cpus) > 1 else str(cpus[0])
    threads, lists = runs[""][0], " ".join(runs[""][1:])
    assert int(threads) >= 2 and lists == f"['{allowed}']"  # the workers exist, none pinned
    if len(cpus) > 1:  # pinned on request: some thread is bound to one core
        assert " ".join(runs["1"][1:]) != f"['{allowed}']"
