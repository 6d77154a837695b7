from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own compile cache, config directory (edgecc-run serve's default
    token file) and tuning log library, never the user's."""
    monkeypatch.setenv("EDGECC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
    monkeypatch.setenv("EDGECC_USER_TUNING_LOGS", str(tmp_path_factory.mktemp("user-logs")))


def make_conv_model(*, batch: int | str = 1, bn: bool = True, cout: int = 8,
                    seed: int = 0) -> onnx.ModelProto:
    """x[batch,3,16,16] -> Conv(3x3) -> [BatchNormalization] -> Relu -> y."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((cout, 3, 3, 3)).astype("float32"), "W"),
             numpy_helper.from_array(rng.standard_normal(cout).astype("float32"), "B")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv0")]
    last = "c"
    if bn:
        for n, v in (("scale", rng.uniform(0.5, 1.5, cout)), ("bias", rng.standard_normal(cout)),
                     ("mean", rng.standard_normal(cout) * 0.1), ("var", rng.uniform(0.5, 1.5, cout))):
            inits.append(numpy_helper.from_array(v.astype("float32"), n))
        nodes.append(helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"],
                                      ["b"], name="bn0"))
        last = "b"
    nodes.append(helper.make_node("Relu", [last], ["y"], name="relu0"))
    graph = helper.make_graph(
        nodes, "tinyconv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, cout, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def make_two_output_model() -> onnx.ModelProto:
    """x[2,4] -> (x+1, x*2) with int64 second input broadcast-free."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["sum"]),
         helper.make_node("Mul", ["x", "two"], ["prod"])],
        "twoout",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("prod", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(np.ones((2, 4), "float32"), "one"),
         numpy_helper.from_array(np.full((2, 4), 2, "float32"), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def conv_onnx(tmp_path) -> Path:
    path = tmp_path / "conv.onnx"
    onnx.save(make_conv_model(), path)
    return path


def ort_run(model: onnx.ModelProto | Path, feed: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    data = model.read_bytes() if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """The reference digits CNN, trained once per session by examples/make_digits.py (~8 s):
    digits.onnx, digits_calib.npz, digits_test.npz."""
    import make_digits

    out = tmp_path_factory.mktemp("digits")
    assert make_digits.main(["-o", str(out)]) == 0  # exits 1 under 97% test accuracy
    return out


# the shipped tuning log of the digits CNN (x86_64), a donor for transfer and tuning tests
DIGITS_LOG = Path(__file__).resolve().parent.parent / "edgecc" / "tuning_logs" / "x86_64" / "digits"


def conv_then(op: str, cout: int = 24) -> onnx.ModelProto:
    """x[1,3,16,16] -> Conv(3x3, cout) -> op -> y: an epilogue the digits log never saw."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((cout, 3, 3, 3)).astype("float32"), "W"),
             numpy_helper.from_array(rng.standard_normal(cout).astype("float32"), "B")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node(op, ["c"], ["y"])], "convthen",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
