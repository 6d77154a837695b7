import re
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from conftest import make_conv_model, make_two_output_model, ort_run, rel_err

import edgecc
from edgecc import ModelError, OutputExistsError, frontend
from edgecc.build import cache
from edgecc.artifact.manifest import Manifest
from edgecc.passes import PIPELINES, apply
from edgecc.runtime import load, random_inputs
from edgecc.targets import get_target


def test_compile_writes_library_and_manifest_and_matches_ort(tmp_path, conv_onnx):
    stages = []
    r = edgecc.compile(conv_onnx, target="x86_64", output=tmp_path / "out",
                       on_stage=lambda name, s: stages.append(name))
    assert not r.cached
    assert stages == ["cache-lookup", "import", "passes", "build", "passes x86_64-avx512",
                      "build x86_64-avx512",
                      "export"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model.json", "model.so", "model.x86_64-avx512.so"]
    m = r.manifest
    assert m.target == "x86_64" and m.arch == "x86_64" and m.device == "cpu"
    assert m.tvm_version.startswith("0.27") and len(m.model_sha256) == 64
    assert m.passes == PIPELINES["cpu-default"]
    assert [s.describe() for s in m.inputs] == ["x: float32[1,3,16,16]"]
    assert [s.describe() for s in m.outputs] == ["y: float32[1,8,16,16]"]
    feed = random_inputs(m.inputs, seed=3)
    got = load(tmp_path / "out").run(feed)["y"]
    assert rel_err(got, ort_run(conv_onnx, feed)[0]) <= 1e-4


def test_x86_64_artifacts_carry_an_avx512_build_that_the_loader_runs_where_it_can(
        tmp_path, conv_onnx):
    """The portable x86_64 artifact is AVX2 code (no zmm register in it) plus the same model
    built for x86_64-avx512; load() runs the AVX-512 one on CPUs that have AVX-512 (this
    machine, if it does), and either build can be named; both give ORT's answer."""
    import subprocess

    from edgecc.targets import cpu_flags

    out = tmp_path / "out"
    m = edgecc.compile(conv_onnx, target="x86_64", output=out, use_cache=False).manifest
    assert m.cpu_features == get_target("x86_64").cpu_features
    [v] = m.variants
    assert (v.target, v.library) == ("x86_64-avx512", "model.x86_64-avx512.so")
    assert v.cpu_features == get_target("x86_64-avx512").cpu_features
    assert v.tvm_target["mcpu"] == "skylake-avx512" and v.kernels["total"] == 3

    def zmm_instructions(library: str) -> int:
        text = subprocess.run(["objdump", "-d", str(out / library)], capture_output=True,
                              text=True, check=True).stdout
        return text.count("zmm")

    assert zmm_instructions("model.so") == 0
    assert zmm_instructions(v.library) > 0
    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= cpu_flags()
    assert load(out).build == ("x86_64-avx512" if avx512 else "x86_64")
    feed = random_inputs(m.inputs, seed=4)
    ref = ort_run(conv_onnx, feed)[0]
    runnable = ("x86_64-avx512", "x86_64") if avx512 else ("x86_64",)
    for build in runnable:
        model = load(out, build=build)
        assert model.build == build
        assert rel_err(model.run(feed)["y"], ref) <= 1e-4
    report = edgecc.verify(out, conv_onnx)  # every build this CPU runs
    assert report.passed and tuple(d.build for d in report.diffs) == runnable


def test_isa_variants_can_be_left_out_and_are_not_built_beside_a_users_tuning_log(
        tmp_path, conv_onnx, capsys):
    from edgecc.cli import main

    r = edgecc.compile(conv_onnx, target="x86_64", output=tmp_path / "a", use_cache=False,
                       isa_variants=False)
    assert r.manifest.variants == () and r.variant_note is None
    assert main(["compile", str(conv_onnx), "-o", str(tmp_path / "b"), "--no-cache", "-q",
                 "--tuning-log", str(Path(edgecc.__file__).parent / "tuning_logs"
                                     / "x86_64" / "digits")]) == 0
    assert Manifest.read(tmp_path / "b").variants == ()
    assert ("  note: no x86_64-avx512 build: the --tuning-log records are for x86_64 only"
            in capsys.readouterr().out)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["model.json", "model.so"]


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
    prim_funcs = sorted(gv.name_hint for gv, f in fused.functions.items()
                        if type(f).__name__ == "PrimFunc")
    # batch norm folded into the conv's weights and bias: conv + bias + relu is one kernel,
    # the same kernel (and tuning workload) as the model without batch norm; the conv runs
    # channels-last, so the NCHW input and output are transposed at the edges
    assert prim_funcs == ["fused_conv2d_add_relu", "transpose", "transpose1"], prim_funcs
    assert text.count("R.call_tir(") == 3
    no_bn = frontend.import_onnx(make_conv_model(bn=False), raw=b"", name="m",
                                        input_shapes={})
    fused_no_bn = apply(no_bn.mod, names[: names.index("fuse") + 1], target=tgt)
    assert sorted(gv.name_hint for gv, f in fused_no_bn.functions.items()
                  if type(f).__name__ == "PrimFunc") == prim_funcs


def _clip_residual_model() -> "onnx.ModelProto":
    """x[1,3,16,16] -> Conv -> Clip(0, 6) -> Conv -> Add(residual) -> Relu -> GlobalAveragePool
    -> Flatten -> Gemm -> y[1,4]: a MobileNet-style chain with ReLU6 and a classifier."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    f = lambda *shape: rng.standard_normal(shape).astype("float32")  # noqa: E731
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("W0", f(8, 3, 3, 3)), ("B0", f(8)), ("W1", f(8, 8, 3, 3) * 0.3), ("B1", f(8)),
        ("lo", np.array(0, "float32")), ("hi", np.array(6, "float32")), ("Wf", f(4, 8)),
        ("Bf", f(4)))]
    nodes = [helper.make_node("Conv", ["x", "W0", "B0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c0", "lo", "hi"], ["r0"]),
             helper.make_node("Conv", ["r0", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c1", "r0"], ["s"]),
             helper.make_node("Relu", ["s"], ["r1"]),
             helper.make_node("GlobalAveragePool", ["r1"], ["p"]),
             helper.make_node("Flatten", ["p"], ["fl"]),
             helper.make_node("Gemm", ["fl", "Wf", "Bf"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "clipres", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_conv_chain_runs_channels_last_with_transposes_only_at_the_edges(tmp_path):
    """ReLU6 (Clip, imported as maximum/minimum kernels) does not break the NHWC chain: it fuses
    into the conv, and the only layout kernels are the input's transpose and the one before
    the flatten (fused with the reshape). Outputs equal ONNX Runtime's."""
    model = _clip_residual_model()
    imported = frontend.import_onnx(model, raw=b"", name="m", input_shapes={})
    names = PIPELINES["cpu-default"]
    fused = apply(imported.mod, names[: names.index("fuse") + 1], target=get_target("x86_64"))
    calls = re.findall(r"R\.call_tir\(cls\.(\w+),", fused.script())
    assert calls == ["transpose", "fused_conv2d_add_maximum_minimum",
                     "fused_conv2d1_add_add1_maximum", "mean", "fused_transpose1_reshape", "fused_matmul_add2"], calls
    conv_out = re.search(r"def fused_conv2d_add_maximum_minimum\((.*?)\):", fused.script())
    assert "(T.int64(1), T.int64(16), T.int64(16), T.int64(8))" in conv_out.group(1)  # NHWC
    r = edgecc.compile(model, output=tmp_path / "o", use_shipped_logs=False, use_cache=False)
    feed = random_inputs(r.manifest.inputs, seed=2)
    assert rel_err(load(tmp_path / "o").run(feed)["y"], ort_run(model, feed)[0]) <= 1e-4


def test_layout_kernels_get_parallel_vectorized_loops_without_a_log():
    """The layout transposes have no tuning record and no dlight rule; cpu-schedule gives them
    MetaSchedule's elementwise schedule (parallel outer loops, vectorized inner ones), not naive
    loops. A kernel with a reduction is not touched by that rule."""
    from edgecc.passes.cpu_schedule import is_elementwise

    imported = frontend.import_onnx(_clip_residual_model(), raw=b"", name="m", input_shapes={})
    names = PIPELINES["cpu-default"]
    mod = apply(imported.mod, names[: names.index("cpu-schedule") + 1],
                target=get_target("x86_64"))
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if "transpose" in gv.name_hint}
    assert [re.sub(r"\d+$", "", k) for k in sorted(funcs)] == ["fused_transpose1_reshape",
                                                                "transpose"]
    for name, func in funcs.items():
        text = func.script()
        assert "T.parallel(" in text and "T.vectorized(" in text, name
        assert func.attrs["tirx.is_scheduled"], name
    before = apply(imported.mod, names[: names.index("cpu-schedule")], target=get_target("x86_64"))
    kinds = {re.sub(r"\d+$", "", gv.name_hint): is_elementwise(f)
             for gv, f in before.functions.items() if type(f).__name__ == "PrimFunc"}
    assert kinds["transpose"] and not kinds["mean"] and not kinds["fused_matmul_add"], kinds


def test_only_scalar_clamp_kernels_become_relax_ops():
    from tvm import relax, topi

    from edgecc.passes.convert_layout import ops_from_clamp_kernels

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 4, 2), "float32"))
    c = relax.const(1.5, "float32")
    with bb.function("main", [x]):
        a = bb.emit_te(topi.maximum, x, c)
        b = bb.emit_te(topi.minimum, a, c)
        d = bb.emit_te(topi.add, b, c)  # not a clamp: stays a kernel
        e = bb.emit_te(topi.maximum, d, x)  # two tensors: stays a kernel
        bb.emit_func_output(e)
    text = ops_from_clamp_kernels(bb.get()).script()
    assert "R.maximum(x, R.const(1.5" in text and "R.minimum(" in text
    assert re.findall(r"R\.call_tir\(cls\.(\w+),", text) == ["add", "maximum1"]


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


def test_cache_hit_skips_every_compile_stage_and_is_identical(tmp_path, conv_onnx):
    first = edgecc.compile(conv_onnx, output=tmp_path / "a")
    second = edgecc.compile(conv_onnx, output=tmp_path / "b")
    assert second.cached and not first.cached
    assert {"import", "passes", "build"} <= set(first.timings)
    assert set(second.timings) == {"cache-lookup"}  # nothing imported, lowered or built
    assert (tmp_path / "a/model.so").read_bytes() == (tmp_path / "b/model.so").read_bytes()
    third = edgecc.compile(conv_onnx, output=tmp_path / "c", use_cache=False)
    assert not third.cached
    other_target = edgecc.compile(conv_onnx, output=tmp_path / "d", target="x86_64-avx512")
    assert not other_target.cached


def test_a_cache_hit_names_the_logs_in_effect_now(tmp_path, conv_onnx, monkeypatch):
    """Two log libraries with the same contents share cache entries; the artifact's manifest
    (and the compile's `kernels:` line) names the logs of this compile, not those of the compile
    that filled the cache (another checkout, say)."""
    import shutil

    from edgecc.schedules.tuning_log import shipped_root

    for lib in ("one", "two"):
        shutil.copytree(shipped_root() / "x86_64" / "digits", tmp_path / lib / "x86_64" / "digits")
    monkeypatch.setenv("EDGECC_TUNING_LOGS", str(tmp_path / "one"))
    edgecc.compile(conv_onnx, output=tmp_path / "a")
    monkeypatch.setenv("EDGECC_TUNING_LOGS", str(tmp_path / "two"))
    second = edgecc.compile(conv_onnx, output=tmp_path / "b")
    assert second.cached
    named = [Path(p).resolve() for p in second.manifest.options["tuning_logs"]]
    assert named == [(tmp_path / "two" / "x86_64" / "digits").resolve()]
    assert Manifest.read(tmp_path / "b") == second.manifest


def test_a_change_to_edgecc_itself_misses_the_cache(tmp_path, conv_onnx, monkeypatch):
    """The key covers edgecc's sources: an edited pass must not be served a stale artifact
    compiled by the code before the edit, whatever the version number says."""
    import shutil

    assert edgecc.compile(conv_onnx, output=tmp_path / "a").cached is False
    assert edgecc.compile(conv_onnx, output=tmp_path / "b").cached is True
    package = tmp_path / "pkg" / "edgecc"
    shutil.copytree(Path(cache.__file__).parents[1], package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "__file__", str(package / "build" / "cache.py"))
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
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    lib.write_bytes(bytes(data))
    r = edgecc.compile(conv_onnx, output=tmp_path / "b")
    assert not r.cached
    assert "does not match the sha256" in r.cache_note
    [entry] = [p for p in cache.cache_root().glob("*/*") if p.is_dir()]
    (entry / "model.so").write_bytes((entry / "model.so").read_bytes()[:1000])  # truncated
    r = edgecc.compile(conv_onnx, output=tmp_path / "b2")
    assert not r.cached and "model.so is 1000 bytes, the manifest says" in r.cache_note
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


def _dense_layer_model():
    """DenseNet's pre-activation layer: concat -> BatchNorm -> ReLU -> conv, the BN after no
    conv (so it cannot be folded into weights), over 32 channels; the concat also feeds the
    next concat (as in a dense block), so it is a kernel of its own."""
    rng = np.random.default_rng(3)
    c = lambda a, n: numpy_helper.from_array(a.astype(np.float32), n)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["a", "x"], ["cat"], axis=1),
             helper.make_node("BatchNormalization", ["cat", "g", "b", "m", "v"], ["bn"],
                              epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("Conv", ["r", "w1"], ["c1"]),
             helper.make_node("Concat", ["cat", "c1"], ["y"], axis=1)]
    inits = [c(rng.standard_normal((16, 16, 3, 3)) * 0.2, "w0"),
             c(rng.uniform(0.5, 1.5, 32), "g"), c(rng.standard_normal(32), "b"),
             c(rng.standard_normal(32), "m"), c(rng.uniform(0.5, 2, 32), "v"),
             c(rng.standard_normal((16, 32, 1, 1)) * 0.2, "w1")]
    graph = helper.make_graph(nodes, "dense", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_batch_norm_after_no_conv_is_one_multiply_add_fused_with_its_relu(tmp_path):
    model = _dense_layer_model()
    imported = frontend.import_onnx(model, raw=b"", name="m", input_shapes={})
    names = PIPELINES["cpu-default"]
    mod = apply(imported.mod, names[: names.index("fuse") + 1], target=get_target("x86_64"))
    kernels = sorted(re.sub(r"\d+$", "", gv.name_hint) for gv, f in mod.functions.items()
                     if type(f).__name__ == "PrimFunc")
    assert "fused_multiply_add_relu" in kernels, kernels
    assert not any("divide" in k or "subtract" in k or k == "relu" for k in kernels), kernels
    edgecc.compile(model, output=tmp_path / "o", use_cache=False, isa_variants=False)
    x = np.random.default_rng(4).standard_normal((1, 16, 8, 8)).astype(np.float32)
    got = edgecc.load(tmp_path / "o").run({"x": x})["y"]
    assert rel_err(got, ort_run(model, {"x": x})[0]) <= 1e-5


def test_per_channel_elementwise_kernels_are_vectorized_along_the_channels():
    """channels-last BN-ReLU over 32 channels on AVX-512: the pixels in parallel, the channels
    in 16-lane vectors (MetaSchedule's schedule vectorizes 64 elements of the fused loop, which
    straddle pixels once the channel count is not a multiple of 64). The concat (fused with
    the input's transpose) reads across the vector: it keeps MetaSchedule's schedule."""
    imported = frontend.import_onnx(_dense_layer_model(), raw=b"", name="m", input_shapes={})
    names = PIPELINES["cpu-default"]
    mod = apply(imported.mod, names[: names.index("cpu-schedule") + 1],
                target=get_target("x86_64-avx512"))
    funcs = {re.sub(r"\d+$", "", gv.name_hint): f for gv, f in mod.functions.items()
             if type(f).__name__ == "PrimFunc"}
    bn = funcs["fused_multiply_add_relu"].script()
    assert re.search(r"T\.parallel\(T\.int64\(64\)\)", bn), bn  # 8 x 8 pixels
    assert re.search(r"range\(T\.int64\(2\)\)", bn) and "T.vectorized(T.int64(16))" in bn, bn
    assert "T.vectorized(T.int64(16))" not in funcs["fused_transpose_concatenate"].script()


def test_softmax_rows_that_are_no_multiple_of_the_vector_width_are_vectorized_whole(tmp_path):
    """ViT's 197-token attention rows: the exp and the divide read the row's max and sum once
    per row. Each row runs as one vector (LLVM splits it into whole vectors and a tail), the
    rows in parallel; MetaSchedule's 64-element chunks of the fused loop straddle rows."""
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "s",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 37, 37])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 37, 37])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    imported = frontend.import_onnx(model, raw=b"", name="m", input_shapes={})
    names = PIPELINES["cpu-default"]
    mod = apply(imported.mod, names[: names.index("cpu-schedule") + 1],
                target=get_target("x86_64-avx512"))
    funcs = {re.sub(r"\d+$", "", gv.name_hint): f.script() for gv, f in mod.functions.items()
             if type(f).__name__ == "PrimFunc"}
    for name in ("fused_subtract_fast_exp", "divide"):
        assert "T.parallel(T.int64(111))" in funcs[name], funcs[name]  # 3 x 37 rows
        assert "T.vectorized(T.int64(37))" in funcs[name], funcs[name]
    edgecc.compile(model, output=tmp_path / "o", use_cache=False)  # runs on any x86-64
    x = np.random.default_rng(5).standard_normal((3, 37, 37)).astype(np.float32) * 4
    assert rel_err(load(tmp_path / "o").run({"x": x})["y"], ort_run(model, {"x": x})[0]) <= 1e-5
