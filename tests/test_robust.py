"""No model TVM compiles may fail in edgecc: layout conversion by region, optional passes that
fall back instead of failing, one-line errors for what is left, every dtype TVM handles."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import pytest
from conftest import ort_run, rel_err
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import edgecc
from edgecc import passes
from edgecc.cli import main
from edgecc.artifact.manifest import Manifest

RNG = np.random.default_rng(0)


def _w(name, shape):
    return nh.from_array((RNG.standard_normal(shape) * 0.2).astype(np.float32), name)


def _model(nodes, inits, inputs, outputs, name="m", opset=17):
    graph = h.make_graph(nodes, name, inputs, outputs, inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _vi(name, shape, dtype=T.FLOAT):
    return h.make_tensor_value_info(name, dtype, shape)


X = _vi("x", [1, 4, 8, 8])


def channel_shuffle():
    """ShuffleNet's split / 5-D reshape + transpose shuffle / concat around convs."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             h.make_node("Split", ["a", "sp"], ["l", "r"], axis=1),
             h.make_node("Conv", ["r", "w2"], ["rc"]),
             h.make_node("Relu", ["rc"], ["rr"]),
             h.make_node("Concat", ["l", "rr"], ["c"], axis=1),
             h.make_node("Reshape", ["c", "s5"], ["b"]),
             h.make_node("Transpose", ["b"], ["t"], perm=[0, 2, 1, 3, 4]),
             h.make_node("Reshape", ["t", "s4"], ["d"]),
             h.make_node("Conv", ["d", "w3"], ["y"])]
    inits = [_w("w1", (8, 4, 3, 3)), _w("w2", (4, 4, 1, 1)), _w("w3", (8, 8, 1, 1)),
             nh.from_array(np.array([4, 4], np.int64), "sp"),
             nh.from_array(np.array([1, 2, 4, 8, 8], np.int64), "s5"),
             nh.from_array(np.array([1, 8, 8, 8], np.int64), "s4")]
    return _model(nodes, inits, [X], [_vi("y", [1, 8, 8, 8])], "shuffle")


def hardswish_se_silu():
    """MobileNetV3/EfficientNet gating: hard-swish, squeeze-excite (mean, conv, sigmoid, mul),
    SiLU, ReLU6 (Clip); all of it follows the convs' NHWC layout."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             h.make_node("HardSwish", ["a"], ["hs"]),
             h.make_node("GlobalAveragePool", ["hs"], ["p"]),
             h.make_node("Conv", ["p", "w2"], ["q"]),
             h.make_node("Sigmoid", ["q"], ["g"]),
             h.make_node("Mul", ["hs", "g"], ["m"]),
             h.make_node("Sigmoid", ["m"], ["sg"]),
             h.make_node("Mul", ["m", "sg"], ["silu"]),
             h.make_node("Clip", ["silu", "lo", "hi"], ["r6"]),
             h.make_node("Conv", ["r6", "w3"], ["y"])]
    inits = [_w("w1", (8, 4, 3, 3)), _w("w2", (8, 8, 1, 1)), _w("w3", (8, 8, 1, 1)),
             nh.from_array(np.array(0, np.float32), "lo"),
             nh.from_array(np.array(6, np.float32), "hi")]
    return _model(nodes, inits, [X], [_vi("y", [1, 8, 8, 8])], "gating")


def detector_heads():
    """YOLO-style: upsample (Resize) + concat, pooling, several outputs of other ranks."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], strides=[2, 2]),
             h.make_node("Resize", ["a", "", "sc"], ["u"], mode="nearest"),
             h.make_node("MaxPool", ["x"], ["mp"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             h.make_node("Conv", ["mp", "w2"], ["b"]),
             h.make_node("Concat", ["u", "b"], ["c"], axis=1),
             h.make_node("Conv", ["c", "w3"], ["head1"]),
             h.make_node("Flatten", ["head1"], ["flat"], axis=2),
             h.make_node("Softmax", ["flat"], ["head2"], axis=-1),
             h.make_node("ReduceMax", ["head1", "ax"], ["head3"], keepdims=0)]
    inits = [_w("w1", (8, 4, 1, 1)), _w("w2", (8, 4, 1, 1)), _w("w3", (6, 16, 1, 1)),
             nh.from_array(np.array([1, 1, 2, 2], np.float32), "sc"),
             nh.from_array(np.array([1], np.int64), "ax")]
    return _model(nodes, inits, [X], [_vi("head1", [1, 6, 8, 8]), _vi("head2", [1, 6, 64]),
                                      _vi("head3", [1, 8, 8])], "heads", opset=18)


def no_conv_reduction():
    """No conv at all: TVM's ConvertLayout alone crashes on it (a 2-D max reduction)."""
    nodes = [h.make_node("Max", ["a", "b"], ["y"])]
    return _model(nodes, [], [_vi("a", [3]), _vi("b", [3])], [_vi("y", [3])], "max")


CASES = {"channel_shuffle": channel_shuffle, "gating": hardswish_se_silu,
         "detector_heads": detector_heads, "no_conv_reduction": no_conv_reduction}


def _feed(model):
    rng = np.random.default_rng(1)
    return {vi.name: rng.standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim])
            .astype(np.float32) for vi in model.graph.input}


@pytest.mark.parametrize("name", sorted(CASES))
def test_models_the_layout_rules_used_to_crash_on_compile_and_match_ort(name, tmp_path):
    model = CASES[name]()
    r = edgecc.compile(model, output=tmp_path / "a", use_cache=False, isa_variants=False)
    assert r.fallbacks == []  # handled by the region conversion, not by a fallback
    feed = _feed(model)
    got = edgecc.load(tmp_path / "a").run(feed)
    for o, ref in zip(model.graph.output, ort_run(model, feed), strict=True):
        assert rel_err(got[o.name], ref) <= 1e-4, o.name


def _after_layout(model):
    from edgecc import frontend
    from edgecc.targets import get_target

    mod = frontend.import_onnx(model, raw=b"", name="m", input_shapes={}).mod
    names = passes.PIPELINES["cpu-default"]
    return passes.apply(mod, names[:names.index("convert-layout") + 1],
                        target=get_target("x86_64"))["main"].script()


def test_gating_ops_follow_the_convs_so_only_the_edges_are_transposed():
    ir = _after_layout(hardswish_se_silu())
    assert ir.count("R.permute_dims") == 2  # the input and the output: none inside
    assert ir.count('data_layout="NHWC"') == 3 and "R.clip" not in ir


def test_a_channel_shuffle_runs_channels_last_with_no_transposes_inside():
    ir = _after_layout(channel_shuffle())
    assert ir.count('data_layout="NHWC"') == 3
    # the input's, the output's and the shuffle's own swap of its two channel axes
    assert ir.count("R.permute_dims") == 3 and "axes=[0, 1, 2, 4, 3]" in ir


def test_slices_and_shuffles_of_a_shuffled_tensor_stay_channels_last():
    ir = _after_layout(shuffle_units())
    assert ir.count('data_layout="NHWC"') == 4 and ir.count("R.strided_slice") == 4
    # the input's, the output's and each shuffle's swap of its two channel axes; nothing else
    assert ir.count("R.permute_dims") == 4 and ir.count("axes=[0, 1, 2, 4, 3]") == 2
    assert ir.count("axis=3") == 2  # both concats over channels-last channels


def five_d_reshape_and_slices():
    """A 5-D reshape + transpose that is not a channel shuffle (it swaps H and W per group),
    and Slice over channels and over rows between convs."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             h.make_node("Slice", ["a", "s0", "e0", "ax0"], ["sc"]),  # channels 2..8
             h.make_node("Slice", ["sc", "s1", "e1", "ax1", "st1"], ["sr"]),  # rows 1, 3, 5, 7
             h.make_node("Conv", ["sr", "w2"], ["b"]),
             h.make_node("Reshape", ["b", "s5"], ["r5"]),
             h.make_node("Transpose", ["r5"], ["t5"], perm=[0, 1, 2, 4, 3]),
             h.make_node("Reshape", ["t5", "s4"], ["d"]),
             h.make_node("Conv", ["d", "w3"], ["y"])]
    ints = lambda v, n: nh.from_array(np.array(v, np.int64), n)  # noqa: E731
    inits = [_w("w1", (8, 4, 3, 3)), _w("w2", (8, 6, 1, 1)), _w("w3", (4, 8, 1, 1)),
             ints([2], "s0"), ints([8], "e0"), ints([1], "ax0"),
             ints([1], "s1"), ints([8], "e1"), ints([2], "ax1"), ints([2], "st1"),
             ints([1, 2, 4, 4, 8], "s5"), ints([1, 8, 8, 4], "s4")]
    return _model(nodes, inits, [X], [_vi("y", [1, 4, 8, 4])], "slices")


def shuffle_units():
    """Two ShuffleNetV2 units as torch exports them: ``chunk`` is a pair of Slices, the shuffle
    is a 5-D reshape + transpose; the second unit slices the first one's shuffled output."""
    ints = lambda v, n: nh.from_array(np.array(v, np.int64), n)  # noqa: E731
    nodes = [h.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1])]
    inits = [_w("w0", (8, 4, 3, 3)), ints([0], "z"), ints([4], "four"), ints([8], "eight"),
             ints([1], "one"), ints([1, 2, 4, 8, 8], "s5"), ints([1, 8, 8, 8], "s4"),
             _w("w3", (8, 8, 1, 1))]
    src = "a"
    for u in (1, 2):
        nodes += [h.make_node("Slice", [src, "z", "four", "one"], [f"l{u}"]),
                  h.make_node("Slice", [src, "four", "eight", "one"], [f"r{u}"]),
                  h.make_node("Conv", [f"r{u}", f"w{u}"], [f"c{u}"]),
                  h.make_node("Relu", [f"c{u}"], [f"rr{u}"]),
                  h.make_node("Concat", [f"l{u}", f"rr{u}"], [f"cat{u}"], axis=1),
                  h.make_node("Reshape", [f"cat{u}", "s5"], [f"b{u}"]),
                  h.make_node("Transpose", [f"b{u}"], [f"t{u}"], perm=[0, 2, 1, 3, 4]),
                  h.make_node("Reshape", [f"t{u}", "s4"], [f"sh{u}"])]
        inits.append(_w(f"w{u}", (4, 4, 1, 1)))
        src = f"sh{u}"
    nodes.append(h.make_node("Conv", [src, "w3"], ["y"]))
    return _model(nodes, inits, [X], [_vi("y", [1, 8, 8, 8])], "units")


def up_and_skip():
    """U-Net's decoder step: a 2x2 stride-2 ConvTranspose (+ bias, ReLU, a scale by 0.5) of
    the bottleneck, concatenated with the skip connection, then a conv."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["skip"], pads=[1, 1, 1, 1]),
             h.make_node("MaxPool", ["skip"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Conv", ["p", "w2"], ["bott"], pads=[1, 1, 1, 1]),
             h.make_node("ConvTranspose", ["bott", "wt", "bt"], ["up"], kernel_shape=[2, 2],
                         strides=[2, 2]),
             h.make_node("Relu", ["up"], ["ur"]),
             h.make_node("Mul", ["ur", "half"], ["us"]),
             h.make_node("Concat", ["us", "skip"], ["cat"], axis=1),
             h.make_node("Conv", ["cat", "w3"], ["y"])]
    inits = [_w("w1", (8, 4, 3, 3)), _w("w2", (16, 8, 3, 3)), _w("wt", (16, 6, 2, 2)),
             _w("bt", (6,)), nh.from_array(np.array(0.5, np.float32), "half"),
             _w("w3", (4, 14, 1, 1))]
    return _model(nodes, inits, [X], [_vi("y", [1, 4, 8, 8])], "unet_step")


CASES["five_d_reshape_and_slices"] = five_d_reshape_and_slices
CASES["up_and_skip"] = up_and_skip


def test_a_2x2_transposed_conv_runs_channels_last_as_a_conv_and_depth_to_space():
    ir = _after_layout(up_and_skip())
    assert "conv2d_transpose" not in ir and ir.count('data_layout="NHWC"') == 4
    # the input's, the output's and the depth-to-space's own (rows of 2x2 blocks)
    assert ir.count("R.permute_dims") == 3 and "axes=[0, 1, 3, 2, 4, 5]" in ir
    assert "R.Tensor((1, 4, 4, 24)" in ir  # the 1x1 conv: 4 x 6 channels per input pixel
CASES["shuffle_units"] = shuffle_units


def test_ops_without_a_checked_layout_rule_keep_nchw_inside_a_converted_region():
    ir = _after_layout(five_d_reshape_and_slices())
    assert ir.count('data_layout="NHWC"') == 3
    # the slices follow NHWC; the 5-D transpose runs in NCHW between transposes at its borders
    assert "(3,), (2,), (8,), (1,)" in ir and "(1,), (1,), (8,), (2,)" in ir  # NHWC axes
    assert "R.reshape" in ir and ir.count("R.permute_dims") == 5


def test_a_failing_layout_conversion_keeps_nchw_and_says_so(tmp_path, monkeypatch, capsys):
    from tvm import relax

    def broken(desired):
        def run(mod):
            raise RuntimeError("Check failed: (msgs[i].IsNested()) is false: Expected nested")
        return run

    monkeypatch.setattr(relax.transform, "ConvertLayout", broken)
    model = hardswish_se_silu()
    onnx.save(model, tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "a"), "--no-cache",
                 "--no-isa-variants", "-q"]) == 0
    note = ("convert-layout: function 'main' kept NCHW (TVM's ConvertLayout failed: "
            "Check failed: (msgs[i].IsNested()) is false: Expected nested)")
    assert f"  fallback: {note}" in capsys.readouterr().out
    assert Manifest.read(tmp_path / "a").options["fallbacks"] == [note]
    feed = _feed(model)
    got = edgecc.load(tmp_path / "a").run(feed)["y"]
    assert rel_err(got, ort_run(model, feed)[0]) <= 1e-4


def test_an_optional_pass_that_raises_is_left_out(tmp_path, monkeypatch):
    def boom(mod, *, target):
        raise ValueError("ScheduleError: Cannot find a block with the name: root")

    monkeypatch.setitem(passes.PASSES, "cpu-schedule",
                        passes.PassInfo("cpu-schedule", "", boom, optional=True))
    model = hardswish_se_silu()
    r = edgecc.compile(model, output=tmp_path / "a", use_cache=False, isa_variants=False)
    assert r.fallbacks == ["cpu-schedule: left out (ValueError: ScheduleError: Cannot find a "
                           "block with the name: root)"]
    feed = _feed(model)
    assert rel_err(edgecc.load(tmp_path / "a").run(feed)["y"], ort_run(model, feed)[0]) <= 1e-4


def test_an_optimized_build_that_fails_is_rebuilt_with_the_required_passes(tmp_path,
                                                                          monkeypatch):
    import edgecc.build.compiler as compiler
    from edgecc.errors import CompileError

    real = compiler._run_passes

    def optimized_fails(mod, pass_names, *args, **kwargs):
        if "rule-schedule" in pass_names:
            raise CompileError("build for x86_64 failed: TVMError: LLVM ERROR")
        return real(mod, pass_names, *args, **kwargs)

    monkeypatch.setattr(compiler, "_run_passes", optimized_fails)
    model = channel_shuffle()
    r = edgecc.compile(model, output=tmp_path / "a", use_cache=False, isa_variants=False)
    (note,) = r.fallbacks
    assert note.startswith("the optimized build failed (build for x86_64 failed: TVMError: LLVM "
                           "ERROR); built with the required passes only (qdq-to-int8, "
                           "decompose-qdq, fold-constant, fold-batchnorm, convert-layout, "
                           "pad-conv-channels, pad-int8-channels, fast-math, pad-matmul, "
                           "apply-tuning, rule-schedule, transfer-tuning, cpu-schedule, "
                           "prepack-weights left out)")
    assert r.manifest.options["kernels"]["rule"] == 0
    feed = _feed(model)
    assert rel_err(edgecc.load(tmp_path / "a").run(feed)["y"], ort_run(model, feed)[0]) <= 1e-4


def test_a_required_pass_that_fails_is_one_error_line_and_nothing_written(tmp_path,
                                                                          monkeypatch, capsys):
    def boom(mod, *, target):
        raise RuntimeError("InternalError: Check failed: no legalization for relax.foo\n"
                           "  at legalize_ops.cc:123")

    monkeypatch.setitem(passes.PASSES, "legalize", passes.PassInfo("legalize", "", boom))
    onnx.save(channel_shuffle(), tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "a"), "--no-cache",
                 "-q"]) == 1
    err = capsys.readouterr().err
    assert err == ("error: pass 'legalize' failed: RuntimeError: at legalize_ops.cc:123\n")
    assert not (tmp_path / "a").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


# ------------------------------------------------------------------------------ dtypes

DTYPES = [("float64", T.DOUBLE), ("int16", T.INT16), ("uint16", T.UINT16),
          ("uint32", T.UINT32), ("uint64", T.UINT64)]


def _dtype_model():
    """One input of each dtype, each added to itself; and a bfloat16 output (Cast)."""
    nodes, inputs, outputs = [], [], []
    for name, code in DTYPES:
        nodes.append(h.make_node("Add", [f"x_{name}", f"x_{name}"], [f"y_{name}"]))
        inputs.append(_vi(f"x_{name}", [2, 3], code))
        outputs.append(_vi(f"y_{name}", [2, 3], code))
    nodes.append(h.make_node("Cast", ["x_float64"], ["y_bf16"], to=T.BFLOAT16))
    outputs.append(_vi("y_bf16", [2, 3], T.BFLOAT16))
    return _model(nodes, [], inputs, outputs, "dtypes")


def _dtype_feed():
    rng = np.random.default_rng(3)
    return {f"x_{n}": (rng.standard_normal((2, 3)) * 100 if n == "float64"
                       else rng.integers(0, 1000, (2, 3))).astype(n) for n, _ in DTYPES}


def test_every_dtype_tvm_handles_compiles_and_runs_in_the_python_loader(tmp_path):
    import ml_dtypes

    r = edgecc.compile(_dtype_model(), output=tmp_path / "a", use_cache=False,
                       isa_variants=False)
    assert [s.dtype for s in r.manifest.inputs] == [n for n, _ in DTYPES]
    assert r.manifest.outputs[-1].dtype == "bfloat16"
    feed = _dtype_feed()
    got = edgecc.load(tmp_path / "a").run(feed)
    for n, _ in DTYPES:
        assert got[f"y_{n}"].dtype == np.dtype(n)
        np.testing.assert_array_equal(got[f"y_{n}"], feed[f"x_{n}"] * 2)
    assert got["y_bf16"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got["y_bf16"], feed["x_float64"].astype(ml_dtypes.bfloat16))
    # bfloat16 inputs too (numpy has no bfloat16: ml_dtypes' arrays go through the loader)
    model = _model([h.make_node("Cast", ["x"], ["y"], to=T.FLOAT)], [],
                   [_vi("x", [4], T.BFLOAT16)], [_vi("y", [4])], "bf16in")
    edgecc.compile(model, output=tmp_path / "b", use_cache=False, isa_variants=False)
    x = np.array([1.5, -2.25, 3.0, 1e3], ml_dtypes.bfloat16)
    np.testing.assert_array_equal(edgecc.load(tmp_path / "b").run({"x": x})["y"],
                                  x.astype(np.float32))


def test_every_dtype_runs_in_the_native_loader(tmp_path):
    from edgecc.deploy.package import package_artifact

    edgecc.compile(_dtype_model(), output=tmp_path / "a", use_cache=False, isa_variants=False)
    bundle = package_artifact(tmp_path / "a", tmp_path / "bundle", log=lambda m: None).path
    feed = _dtype_feed()
    args = []
    for name, a in feed.items():
        np.save(tmp_path / f"{name}.npy", a)
        args += ["--input", f"{name}={tmp_path / f'{name}.npy'}"]
    proc = subprocess.run([str(bundle / "run.sh"), *args, "--output",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for n, _ in DTYPES:
        got = np.load(tmp_path / "out" / f"y_{n}.npy")
        assert got.dtype == np.dtype(n)
        np.testing.assert_array_equal(got, feed[f"x_{n}"] * 2)
    import ml_dtypes

    bf = np.load(tmp_path / "out" / "y_bf16.npy").view(ml_dtypes.bfloat16)  # saved as raw <V2
    np.testing.assert_array_equal(bf, feed["x_float64"].astype(ml_dtypes.bfloat16))
    manifest = json.loads((tmp_path / "a" / "model.json").read_text())
    assert manifest["outputs"][-1]["dtype"] == "bfloat16"


def test_an_output_whose_shape_depends_on_the_input_runs_in_both_loaders(tmp_path):
    """Range with a tensor limit: the manifest says the output dim is dynamic, both loaders
    return its real shape."""
    from edgecc.deploy.package import package_artifact

    model = _model([h.make_node("Range", ["start", "limit", "delta"], ["y"])],
                   [nh.from_array(np.array(0, np.int64), "start"),
                    nh.from_array(np.array(2, np.int64), "delta")],
                   [_vi("limit", [], T.INT64)], [_vi("y", [None], T.INT64)], "range")
    r = edgecc.compile(model, output=tmp_path / "a", use_cache=False, isa_variants=False)
    assert r.manifest.outputs[0].describe() == "y: int64[?]"
    limit = np.array(7, np.int64)
    np.testing.assert_array_equal(edgecc.load(tmp_path / "a").run({"limit": limit})["y"],
                                  np.arange(0, 7, 2))
    bundle = package_artifact(tmp_path / "a", tmp_path / "bundle", log=lambda m: None).path
    np.save(tmp_path / "limit.npy", np.array(11, np.int64))
    proc = subprocess.run([str(bundle / "run.sh"), "--input", f"limit={tmp_path / 'limit.npy'}",
                           "--output", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "y.npy"), np.arange(0, 11, 2))
