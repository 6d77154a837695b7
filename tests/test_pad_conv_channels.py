"""pad-conv-channels: channels-last float convs whose output channels give no useful vector
(ShuffleNetV2's 58, a detector head's 75) compute on zero-padded weights and are sliced back,
with the same numbers."""

import re

import numpy as np
import onnx
from conftest import ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

import edgecc
from edgecc.passes.pad_conv_channels import padding
from edgecc.runtime import load


def test_padding_only_where_no_half_vector_divides_the_channels():
    assert padding(58, 16) == 6 and padding(116, 16) == 12 and padding(75, 16) == 5
    assert padding(58, 8) == 6 and padding(116, 8) == 0  # 4 lanes of 8: half a vector
    assert padding(24, 16) == 0 and padding(40, 16) == 0 and padding(232, 16) == 0
    assert padding(64, 16) == 0 and padding(10, 16) == 0  # whole vectors; narrower than one
    assert padding(58, 4) == 0 and padding(30, 4) == 0 and padding(58, 2) == 0


def _convs() -> onnx.ModelProto:
    """x[1,16,10,10] -> conv 3x3 to 58 (+bias, ReLU) -> conv 1x1 to 75; and a depthwise conv
    over the 58 channels (grouped convs are left as they are)."""
    rng = np.random.default_rng(0)
    w = lambda shape, n: numpy_helper.from_array(  # noqa: E731
        (rng.standard_normal(shape) * 0.2).astype("float32"), n)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"]),
         helper.make_node("Conv", ["r", "wd"], ["d"], group=58, pads=[1, 1, 1, 1])], "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 75, 10, 10]),
         helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, 58, 10, 10])],
        [w((58, 16, 3, 3), "w1"), w((58,), "b1"), w((75, 58, 1, 1), "w2"), w((58, 1, 3, 3), "wd")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_awkward_output_channels_are_padded_to_whole_vectors_and_sliced_back(tmp_path):
    path = tmp_path / "convs.onnx"
    onnx.save(_convs(), path)
    ir: list[str] = []
    edgecc.compile(path, output=tmp_path / "o", target="x86_64", use_cache=False,
                   isa_variants=False, print_ir_after=["pad-conv-channels"], emit_ir=ir.append)
    convs = re.findall(r"R\.Tensor\(\((\d+(?:, \d+)*)\), dtype=\"float32\"\) = R\.nn\.conv2d",
                       ir[0])
    # 58 -> 64 and 75 -> 80 output channels (AVX2: 8 lanes); the depthwise conv keeps 58
    assert sorted(convs) == ["1, 10, 10, 58", "1, 10, 10, 64", "1, 10, 10, 80"]
    assert ir[0].count("R.strided_slice(") == 2
    feed = {"x": np.random.default_rng(1).standard_normal((1, 16, 10, 10)).astype("float32")}
    got = load(tmp_path / "o").run(feed)
    for name, ref in zip(("y", "d"), ort_run(path, feed), strict=True):
        assert got[name].shape == ref.shape
        assert rel_err(got[name], ref) <= 1e-5, name
