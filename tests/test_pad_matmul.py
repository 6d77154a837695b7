"""pad-matmul: matrix products with a prime row or column count (ViT's 197 tokens) are computed on
zero-padded operands and sliced back, with the same numbers."""

import re

import numpy as np
import onnx
from conftest import ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

import edgecc
from edgecc.passes.pad_matmul import padded_columns, padded_rows
from edgecc.runtime import load


def test_padded_sizes():
    assert padded_rows(197) == 198  # prime: next multiple of 6
    assert padded_rows(13 * 17) == 222
    assert padded_rows(196) == 196 and padded_rows(128) == 128 and padded_rows(125) == 125
    assert padded_rows(7) == 7  # too small to gain
    assert padded_columns(197) == 208 and padded_columns(576) == 576
    assert padded_columns(10) == 10


def _attention_like() -> onnx.ModelProto:
    """x[1,197,40] @ W[40,50] -> h; q[3,197,64] @ k[3,64,197] -> s; small[5,8] @ V[8,7]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((40, 50)).astype("float32"), "W"),
             numpy_helper.from_array(rng.standard_normal((8, 7)).astype("float32"), "V")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("MatMul", ["q", "k"], ["s"]),
         helper.make_node("MatMul", ["small", "V"], ["t"])], "att",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 197, 40]),
         helper.make_tensor_value_info("q", TensorProto.FLOAT, [3, 197, 64]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, [3, 64, 197]),
         helper.make_tensor_value_info("small", TensorProto.FLOAT, [5, 8])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 197, 50]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [3, 197, 197]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, [5, 7])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_prime_token_counts_are_padded_and_sliced_back(tmp_path):
    path = tmp_path / "att.onnx"
    onnx.save(_attention_like(), path)
    ir: list[str] = []
    edgecc.compile(path, output=tmp_path / "o", use_cache=False, print_ir_after=["pad-matmul"],
                   emit_ir=ir.append)
    products = re.findall(r"R\.matmul\((\w+), (\w+)", ir[0])
    assert len(products) == 3
    shapes = set(re.findall(r"R\.Tensor\(\((\d+(?:, \d+)*)\)", ir[0]))
    # x's rows 197 -> 198 and W's 50 columns -> 64; q's rows -> 198, k's columns 197 -> 208
    assert {"1, 198, 40", "40, 64", "1, 198, 64", "3, 198, 64", "3, 64, 208",
            "3, 198, 208"} <= shapes
    assert "5, 8" in shapes and not any(s.startswith("6, ") for s in shapes)  # small: as is
    assert ir[0].count("R.strided_slice(") == 2
    rng = np.random.default_rng(1)
    feed = {"x": rng.standard_normal((1, 197, 40)).astype("float32"),
            "q": rng.standard_normal((3, 197, 64)).astype("float32"),
            "k": rng.standard_normal((3, 64, 197)).astype("float32"),
            "small": rng.standard_normal((5, 8)).astype("float32")}
    got = load(tmp_path / "o").run(feed)
    for name, ref in zip(("h", "s", "t"), ort_run(path, feed), strict=True):
        assert got[name].shape == ref.shape
        assert rel_err(got[name], ref) <= 1e-5, name
