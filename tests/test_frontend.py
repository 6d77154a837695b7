import onnx
import pytest
from conftest import make_conv_model
from onnx import TensorProto, helper

from edgecc import ModelError, UnsupportedOperatorError
from edgecc.frontend import import_onnx, read_onnx, resolve_input_shapes


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match=r"^model file '.*nope.onnx' not found$"):
        read_onnx(tmp_path / "nope.onnx")


def test_not_onnx(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("this is not a protobuf\n" * 10)
    with pytest.raises(ModelError, match="is not a valid ONNX model"):
        read_onnx(p)


def test_truncated(tmp_path, conv_onnx):
    data = conv_onnx.read_bytes()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="is not a valid ONNX model"):
        read_onnx(p)


def test_unsupported_ops_are_all_listed_with_nodes():
    graph = helper.make_graph(
        [helper.make_node("Celu", ["x"], ["a"], name="celu_1"),
         helper.make_node("Det", ["a"], ["b"], name="det_1"),
         helper.make_node("Celu", ["x"], ["c"], name="celu_2"),
         helper.make_node("Relu", ["c"], ["d"], name="relu_ok")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("d", TensorProto.FLOAT, [3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOperatorError) as e:
        import_onnx(model, raw=b"", name="g", input_shapes={})
    assert str(e.value) == ("2 unsupported operator type(s): Celu (nodes: celu_1, celu_2); "
                            "Det (nodes: det_1)")
    assert e.value.unsupported == {"Celu": ["celu_1", "celu_2"], "Det": ["det_1"]}


def test_dynamic_dims_must_be_pinned():
    model = make_conv_model(batch="N")
    with pytest.raises(ModelError) as e:
        import_onnx(model, raw=b"", name="m", input_shapes={})
    assert str(e.value).startswith("input(s) with dynamic dimensions: x [N,3,16,16]; pin them "
                                   "with --input-shape")
    imported = import_onnx(model, raw=b"", name="m", input_shapes={"x": (2, 3, 16, 16)})
    assert imported.inputs[0].shape == (2, 3, 16, 16)
    assert imported.outputs[0].shape == (2, 8, 16, 16)


def test_pinned_shape_checks():
    declared = [("x", [None, 3, 16, 16], "float32")]
    with pytest.raises(ModelError, match="conflicts with the model's fixed shape"):
        resolve_input_shapes(declared, {"x": (1, 4, 16, 16)})
    with pytest.raises(ModelError, match="rank 2 given but the model declares rank 4"):
        resolve_input_shapes(declared, {"x": (1, 3)})
    with pytest.raises(ModelError, match=r"names unknown input\(s\) y; the model's inputs are: x"):
        resolve_input_shapes(declared, {"y": (1,)})


def test_import_bakes_weights_as_constants():
    imported = import_onnx(make_conv_model(), raw=b"abc", name="m", input_shapes={})
    params = imported.mod["main"].params
    assert [p.name for p in params] == ["x"]
    assert imported.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_onnx_flops_of_each_contraction_kind():
    import numpy as np
    from onnx import numpy_helper

    from edgecc.frontend.onnx_shapes import model_flops, node_flops, tensor_shapes

    f = TensorProto.FLOAT
    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype("float32"), name)

    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),  # 3 -> 8, 3x3, 16x16
        helper.make_node("Conv", ["c", "G"], ["g"], group=4, pads=[1, 1, 1, 1]),  # 8 -> 8, 4 groups
        helper.make_node("ConvTranspose", ["g", "T"], ["t"], strides=[2, 2]),  # 8 -> 4, 2x2
        helper.make_node("Flatten", ["t"], ["flat"]),  # [1, 4096]
        helper.make_node("Gemm", ["flat", "A"], ["gemm"]),  # 4096 -> 10
        helper.make_node("MatMul", ["gemm", "B"], ["y"]),  # 10 -> 5
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", f, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", f, [1, 5])],
        [init("W", (8, 3, 3, 3)), init("G", (8, 2, 3, 3)), init("T", (8, 4, 2, 2)),
         init("A", (4096, 10)), init("B", (10, 5))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    shapes = tensor_shapes(model)
    assert shapes["t"] == ((1, 4, 32, 32), "float32")
    want = [2 * 8 * 256 * 27,  # out elements x (cin x kh x kw)
            2 * 8 * 256 * 18,  # grouped: 2 input channels per group
            2 * 8 * 256 * 16,  # transposed: every input element x (cout x kh x kw)
            None,  # not a contraction
            2 * 10 * 4096, 2 * 5 * 10]
    assert [node_flops(n, shapes) for n in model.graph.node] == want
    assert model_flops(model) == sum(w for w in want if w is not None)
