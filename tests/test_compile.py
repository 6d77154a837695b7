import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_conv_model, make_two_output_model, ort_run, rel_err

import edgecc
from edgecc import ModelError, OutputExistsError, cache, frontend
from edgecc.passes import PIPELINES, apply
from edgecc.runtime import load, random_inputs
from edgecc.targets import get_target


def test_compile_writes_library_and_manifest_and_matches_ort(tmp_path, conv_onnx):
    stages = []
    r = edgecc.compile(conv_onnx, target="x86_64", output=tmp_path / "out",
                       on_stage=lambda name, s: stages.append(name))
    assert not r.cached
    assert stages == ["cache-lookup", "import", "passes", "build", "export"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.json", "model.so"]
    m = r.manifest
    assert m.target == "x86_64" and m.arch == "x86_64" and m.device == "cpu"
    assert m.tvm_version.startswith("0.27") and len(m.model_sha256) == 64
    assert m.passes == PIPELINES["cpu-default"]
    assert [s.describe() for s in m.inputs] == ["x: float32[1,3,16,16]"]
    assert [s.describe() for s in m.outputs] == ["y: float32[1,8,16,16]"]
    feed = random_inputs(m.inputs, seed=3)
    got = load(tmp_path / "out").run(feed)["y"]
    assert rel_err(got, ort_run(conv_onnx, feed)[0]) <= 1e-4


def test_multiple_outputs_keep_their_names(tmp_path):
    model = make_two_output_model()
    r = edgecc.compile(model, output=tmp_path / "o")
    out = load(tmp_path / "o").run(x=np.arange(8, dtype="float32").reshape(2, 4))
    ref = ort_run(model, {"x": np.arange(8, dtype="float32").reshape(2, 4)})
    assert list(out) == ["sum", "prod"] == [s.name for s in r.manifest.outputs]
    np.testing.assert_allclose(out["sum"], ref[0])
    np.testing.assert_allclose(out["prod"], ref[1])


def test_lowered_ir_has_no_batch_norm_and_is_fused():
    imported = frontend.import_onnx(make_conv_model(), raw=b"", name="m",
                                           input_shapes={})
    assert "batch_norm" in imported.mod.script()
    tgt = get_target("x86_64")
    names = PIPELINES["cpu-default"]
    fused = apply(imported.mod, names[: names.index("fuse") + 1], target=tgt)
    text = fused.script()
    assert "batch_norm" not in text
    prim_funcs = [gv.name_hint for gv, f in fused.functions.items()
                  if type(f).__name__ == "PrimFunc"]
    # batch norm folded into the conv's weights and bias: conv + bias + relu is one kernel,
    # the same kernel (and tuning workload) as the model without batch norm
    assert prim_funcs == ["fused_conv2d_add_relu"], prim_funcs
    assert text.count("R.call_tir(") == 1
    no_bn = frontend.import_onnx(make_conv_model(bn=False), raw=b"", name="m",
                                        input_shapes={})
    fused_no_bn = apply(no_bn.mod, names[: names.index("fuse") + 1], target=tgt)
    assert [gv.name_hint for gv, f in fused_no_bn.functions.items()
            if type(f).__name__ == "PrimFunc"] == prim_funcs


def test_existing_output_refused_then_forced(tmp_path, conv_onnx):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="already exists"):
        edgecc.compile(conv_onnx, output=out)
    assert (out / "keep.txt").exists()
    edgecc.compile(conv_onnx, output=out, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.so").exists()


def test_failed_compile_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(ModelError):
        edgecc.compile(bad, output=tmp_path / "out", use_cache=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_cache_hit_is_fast_and_identical(tmp_path, conv_onnx):
    first = edgecc.compile(conv_onnx, output=tmp_path / "a")
    start = time.perf_counter()
    second = edgecc.compile(conv_onnx, output=tmp_path / "b")
    elapsed = time.perf_counter() - start
    assert second.cached and not first.cached
    assert elapsed < 0.5, elapsed
    assert (tmp_path / "a/model.so").read_bytes() == (tmp_path / "b/model.so").read_bytes()
    third = edgecc.compile(conv_onnx, output=tmp_path / "c", use_cache=False)
    assert not third.cached
    other_target = edgecc.compile(conv_onnx, output=tmp_path / "d", target="x86_64-avx512")
    assert not other_target.cached


def test_a_change_to_edgecc_itself_misses_the_cache(tmp_path, conv_onnx, monkeypatch):
    """The key covers edgecc's sources: an edited pass must not be served a stale artifact
    compiled by the code before the edit, whatever the version number says."""
    import shutil

    assert edgecc.compile(conv_onnx, output=tmp_path / "a").cached is False
    assert edgecc.compile(conv_onnx, output=tmp_path / "b").cached is True
    package = tmp_path / "pkg" / "edgecc"
    shutil.copytree(Path(cache.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "__file__", str(package / "cache.py"))
    try:
        cache.source_digest.cache_clear()
        unchanged = cache.source_digest()
        cache.source_digest.cache_clear()
        p = package / "passes" / "fuse.py"
        p.write_text(p.read_text() + "\n# edited\n")
        assert cache.source_digest() != unchanged
        assert edgecc.compile(conv_onnx, output=tmp_path / "c").cached is False
    finally:
        cache.source_digest.cache_clear()  # the next call hashes the real package again


def test_corrupt_cache_entry_is_detected_and_rebuilt(tmp_path, conv_onnx):
    edgecc.compile(conv_onnx, output=tmp_path / "a")
    [entry] = [p for p in cache.cache_root().glob("*/*") if p.is_dir()]
    lib = entry / "model.so"
    lib.write_bytes(lib.read_bytes()[:1000])
    r = edgecc.compile(conv_onnx, output=tmp_path / "b")
    assert not r.cached
    assert "does not match the sha256" in r.cache_note
    feed = random_inputs(r.manifest.inputs)
    assert rel_err(load(tmp_path / "b").run(feed)["y"], ort_run(conv_onnx, feed)[0]) <= 1e-4
    assert edgecc.compile(conv_onnx, output=tmp_path / "c").cached


def test_torch_module_matches_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(1, 3, 8, 8)
    r = edgecc.compile(net, example_inputs=(x,), output=tmp_path / "t")
    assert [s.describe() for s in r.manifest.outputs] == ["output0: float32[1,5]"]
    got = load(tmp_path / "t").run({r.manifest.inputs[0].name: x.numpy()})["output0"]
    with torch.no_grad():
        ref = net(x).numpy()
    assert rel_err(got, ref) <= 1e-4


def test_torch_module_needs_example_inputs(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(ModelError, match="needs example_inputs"):
        edgecc.compile(torch.nn.ReLU(), output=tmp_path / "t")


def test_unsupported_model_object(tmp_path):
    with pytest.raises(ModelError, match="cannot compile a dict"):
        edgecc.compile({}, output=tmp_path / "t")


def test_untuned_dense_kernels_get_a_default_cpu_schedule(tmp_path):
    """No tuning record: the cpu-schedule pass still parallelizes GEMV-shaped kernels instead
    of leaving naive loops (tuned kernels are left alone)."""
    torch = pytest.importorskip("torch")
    zoo = pytest.importorskip("zoo")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU()).eval()
    x = torch.randn(1, 64)
    zoo.export_onnx(net, x, tmp_path / "lin.onnx")
    raw = (tmp_path / "lin.onnx").read_bytes()
    imported = frontend.import_onnx(frontend.parse_onnx_bytes(raw, source="lin"),
                                           raw=raw, name="lin", input_shapes={})
    names = PIPELINES["cpu-default"]
    tgt = get_target("x86_64")
    before = apply(imported.mod, names[: names.index("cpu-schedule")], target=tgt)
    after = apply(before, ["cpu-schedule"], target=tgt)
    kernels = lambda mod: [f for _, f in mod.functions.items()  # noqa: E731
                           if type(f).__name__ == "PrimFunc"]
    assert not any("T.parallel" in f.script() for f in kernels(before))
    assert [("T.parallel" in f.script()) for f in kernels(after)] == [True]
    r = edgecc.compile(tmp_path / "lin.onnx", output=tmp_path / "a", use_shipped_logs=False)
    got = load(tmp_path / "a").run({"input": x.numpy()})["output"]
    assert rel_err(got, net(x).detach().numpy()) <= 1e-4 and r.kernels == (0, 1)


@pytest.mark.parametrize("target,pipeline", [("x86_64", "cpu-default"),
                                             ("cuda-sm75", "cuda-default")])
def test_every_pass_is_pure(target, pipeline):
    """Each pass returns a new module and leaves the one it was given untouched."""
    mod = frontend.import_onnx(make_conv_model(), raw=b"", name="m", input_shapes={}).mod
    tgt = get_target(target)
    for name in PIPELINES[pipeline]:
        before = mod.script()
        out = apply(mod, [name], target=tgt)
        assert mod.script() == before, f"{name} changed its input module"
        mod = out
