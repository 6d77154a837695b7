"""fast-math: float32 exp, erf, tanh, sigmoid and softmax become TVM's vector approximations, and
the outputs stay within 1e-5 of ONNX Runtime's."""

import re

import numpy as np
import onnx
from conftest import ort_run, rel_err
from onnx import TensorProto, helper

import edgecc
from edgecc.runtime import load

OPS = ("Exp", "Erf", "Tanh", "Sigmoid", "Softmax")


def _unary_model(dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    """x[2,64,50] -> each of OPS on its own -> y_<op> (Softmax over the last axis)."""
    nodes = [helper.make_node(op, ["x"], [f"y_{op}"], **({"axis": -1} if op == "Softmax" else {}))
             for op in OPS]
    graph = helper.make_graph(
        nodes, "unary", [helper.make_tensor_value_info("x", dtype, [2, 64, 50])],
        [helper.make_tensor_value_info(f"y_{op}", dtype, [2, 64, 50]) for op in OPS])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _libm_calls(tir: str) -> dict[str, int]:
    return {f: len(re.findall(rf"T\.{f}\(", tir)) for f in ("exp", "erf", "tanh", "sigmoid")}


def test_float32_transcendentals_lower_to_arithmetic_and_match_ort(tmp_path):
    path = tmp_path / "unary.onnx"
    onnx.save(_unary_model(), path)
    ir: list[str] = []
    edgecc.compile(path, output=tmp_path / "o", use_cache=False, print_ir_after=["legalize"],
                   emit_ir=ir.append)
    # no call left that LLVM turns into a libm call per element
    assert _libm_calls(ir[0]) == {"exp": 0, "erf": 0, "tanh": 0, "sigmoid": 0}
    x = np.random.default_rng(0).uniform(-9, 9, (2, 64, 50)).astype("float32")
    got = load(tmp_path / "o").run({"x": x})
    for op, ref in zip(OPS, ort_run(path, {"x": x}), strict=True):
        assert rel_err(got[f"y_{op}"], ref) <= 1e-5, op
        if op == "Softmax":
            np.testing.assert_allclose(got["y_Softmax"].sum(-1), 1.0, rtol=1e-5)


def test_other_dtypes_keep_the_exact_functions(tmp_path):
    path = tmp_path / "unary64.onnx"
    onnx.save(_unary_model(TensorProto.DOUBLE), path)
    ir: list[str] = []
    edgecc.compile(path, output=tmp_path / "o", use_cache=False, print_ir_after=["legalize"],
                   emit_ir=ir.append)
    calls = _libm_calls(ir[0])
    assert calls["exp"] >= 2 and calls["erf"] == 1 and calls["tanh"] == 1
    from scipy.special import erf, softmax

    x = np.random.default_rng(0).uniform(-9, 9, (2, 64, 50))
    got = load(tmp_path / "o").run({"x": x})
    refs = (np.exp(x), erf(x), np.tanh(x), 1 / (1 + np.exp(-x)), softmax(x, axis=-1))
    for op, ref in zip(OPS, refs, strict=True):  # ORT has no float64 Erf
        assert rel_err(got[f"y_{op}"], ref) <= 1e-12, op


def test_the_pass_can_be_left_out(tmp_path):
    """The pipeline without fast-math (as a fallback would run it) keeps exact exp calls."""
    from edgecc import frontend, passes
    from edgecc.targets import get_target

    path = tmp_path / "unary.onnx"
    onnx.save(_unary_model(), path)
    src = frontend.model_source(path)
    mod = frontend.import_model(path, src, raw=src.raw, shapes={}, example_inputs=None).mod
    names = passes.PIPELINES["cpu-default"]
    upto = names[:names.index("legalize") + 1]
    without = tuple(n for n in upto if n != "fast-math")
    tgt = get_target("x86_64")
    fast = passes.apply(mod, upto, target=tgt).script(show_meta=False)
    exact = passes.apply(mod, without, target=tgt).script(show_meta=False)
    assert _libm_calls(fast)["exp"] == 0 and _libm_calls(exact)["exp"] >= 2
