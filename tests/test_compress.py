"""Pruning (L1 unstructured and structured) and knowledge distillation (1 and 2 DDP processes) on
the digits CNN: real sparsity, FLOPs, accuracy gates, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

import edgecc
from edgecc.compress import datasets
from edgecc.cli import main
from edgecc.compress.distill import DistillConfig, check_pair, distill
from edgecc.errors import InputError, ModelError
from edgecc.compress.evaluate import accuracy, predict_artifact, predict_onnx
from edgecc.frontend.onnx_torch import make_module
from edgecc.compress.prune import conv_flops, count_flops, l1_channel_mask, prune

torch = pytest.importorskip("torch")


# ----------------------------------------------------------------------------- numpy math

def test_l1_channel_mask_keeps_largest_norms_and_breaks_ties_by_index():
    w = np.zeros((6, 2, 1, 1), "float32")
    w[:, 0, 0, 0] = [1.0, -5.0, 2.0, 2.0, 0.5, 3.0]  # L1 norms 1, 5, 2, 2, .5, 3
    assert l1_channel_mask(w, 0.5).tolist() == [False, True, True, False, False, True]
    assert l1_channel_mask(w, 0.99).tolist() == [False, True, False, False, False, False]
    with pytest.raises(InputError, match=r"sparsity must be in \(0, 1\), got 1.0"):
        l1_channel_mask(w, 1.0)


def test_flops_of_a_conv():
    assert conv_flops(8, 3, 3, 3, 16, 16) == 2 * 8 * 3 * 9 * 256
    assert conv_flops(8, 8, 3, 3, 4, 4, groups=8) == 2 * 8 * 1 * 9 * 16


def test_count_flops_matches_the_formula(conv_onnx):
    assert count_flops(onnx.load(conv_onnx)) == conv_flops(8, 3, 3, 3, 16, 16)


# ----------------------------------------------------------------------------- onnx <-> torch

def test_onnx_module_matches_onnx_runtime_and_writes_weights_back(digits_dir):
    model = onnx.load(digits_dir / "digits.onnx")
    x = datasets.digits().test.x[:8]
    ref = predict_onnx(digits_dir / "digits.onnx", x)
    module = make_module(model).eval()
    with torch.no_grad():
        got = torch.cat([module(torch.from_numpy(x[i:i + 1])) for i in range(8)]).numpy()
    assert rel_err(got, ref) < 1e-5
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(0.5)
    halved = {t.name: numpy_helper.to_array(t) for t in module.to_onnx().graph.initializer}
    orig = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w = "classifier.weight"
    np.testing.assert_allclose(halved[w], orig[w] * 0.5)


# ----------------------------------------------------------------------------- pruning

def test_unstructured_global_l1_reaches_the_sparsity_on_the_smallest_weights(digits_dir,
                                                                            tmp_path):
    model = onnx.load(digits_dir / "digits.onnx")
    pruned, report = prune(model, sparsity=0.5, method="l1-unstructured")
    names = [n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    w0 = np.concatenate([before[n].ravel() for n in names])
    w1 = np.concatenate([after[n].ravel() for n in names])
    assert abs((w1 == 0).mean() - 0.5) < 1e-3 and abs(report.achieved - (w1 == 0).mean()) < 1e-9
    # global L1: every kept weight is at least as large as every removed one
    assert np.abs(w0[w1 != 0]).min() >= np.abs(w0[w1 == 0]).max()
    np.testing.assert_array_equal(w1[w1 != 0], w0[w1 != 0])
    assert report.flops_after == report.flops_before  # zeros do not remove work
    onnx.save(pruned, tmp_path / "pruned.onnx")  # half the weights gone, still accurate
    assert accuracy(tmp_path / "pruned.onnx", datasets.digits().test) > 0.9


def test_structured_pruning_removes_channels_and_flops(digits_dir, tmp_path):
    model = onnx.load(digits_dir / "digits.onnx")
    pruned, report = prune(model, sparsity=0.5, method="l1-structured")
    assert list(report.channels.values()) == [(32, 16), (64, 32), (64, 32)]
    assert report.flops_before / report.flops_after >= 1.6  # the gate; 3.96x here
    shapes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert shapes["classifier.weight"] == (10, 32)
    # the pruned model is a valid, smaller dense model; edgecc compiles it and matches ORT
    path = tmp_path / "pruned.onnx"
    onnx.save(pruned, path)
    x = datasets.digits().test.x[:1]
    edgecc.compile(path, output=tmp_path / "a")
    got = predict_artifact(tmp_path / "a", x)
    assert rel_err(got, ort_run(path, {"input": x})[0]) < 1e-4


def _residual_model():
    """x -> Conv a -> Relu -> Conv b -> Add(with a's output) -> y: a and b feed an Add."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype("float32"), n)
             for n, s in (("Wa", (4, 4, 1, 1)), ("Wb", (4, 4, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "Wa"], ["a"], name="conv_a"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "Wb"], ["b"], name="conv_b"),
             helper.make_node("Add", ["a", "b"], ["y"])]
    g = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                       [1, 4, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_structured_pruning_refuses_residual_channels():
    with pytest.raises(ModelError) as e:
        prune(_residual_model(), sparsity=0.5, method="l1-structured")
    assert str(e.value) == ("no conv channels can be pruned structurally in this model: conv_a: "
                            "its output has 2 consumers (a branch or residual); conv_b: it "
                            "feeds Add")


def test_cli_prune(digits_dir, tmp_path, capsys):
    out = tmp_path / "p.onnx"
    assert main(["prune", str(digits_dir / "digits.onnx"), "--sparsity", "0.5", "--method",
                 "l1-structured", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "FLOPs 3,577,088 -> 903,808 (3.96x fewer)" in text and out.is_file()
    assert main(["prune", str(digits_dir / "digits.onnx"), "--sparsity", "0", "-o",
                 str(tmp_path / "q.onnx")]) == 1
    assert "error: sparsity must be in (0, 1), got 0.0" in capsys.readouterr().err
    assert main(["prune", str(digits_dir / "digits.onnx"), "--sparsity", "0.5", "-o",
                 str(out)]) == 1
    assert "already exists (use --force to replace it)" in capsys.readouterr().err
    assert main(["prune", str(tmp_path / "m.pt2"), "--sparsity", "0.5", "-o",
                 str(tmp_path / "r.onnx")]) == 1
    assert "for an exported program (.pt2) export to ONNX first" in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "r.onnx").exists()


# ----------------------------------------------------------------------------- distillation

@pytest.fixture(scope="module")
def pruned_student(digits_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("student") / "pruned.onnx"
    onnx.save(prune(onnx.load(digits_dir / "digits.onnx"), sparsity=0.5,
                    method="l1-structured")[0], path)
    return path


def test_distilled_pruned_student_is_within_one_point_of_the_teacher(digits_dir, pruned_student,
                                                                     tmp_path):
    split = datasets.digits()
    before = accuracy(pruned_student, split.test)
    r = distill(digits_dir / "digits.onnx", pruned_student, data=split.train, test=split.test,
                output=tmp_path / "s.onnx")
    assert r.student_accuracy >= r.teacher_accuracy - 0.010, (r.student_accuracy,
                                                              r.teacher_accuracy)
    assert r.student_accuracy > before + 0.2  # pruning alone broke it; training restored it
    assert accuracy(tmp_path / "s.onnx", split.test) == r.student_accuracy


def test_ddp_two_processes_end_with_identical_weights(digits_dir, pruned_student, tmp_path):
    split = datasets.digits()
    r = distill(digits_dir / "digits.onnx", pruned_student, data=split.train, test=split.test,
                output=tmp_path / "s.onnx", config=DistillConfig(nproc=2, epochs=6))
    assert r.nproc == 2 and len(r.rank_digests) == 2
    assert r.rank_digests[0] == r.rank_digests[1]
    assert r.student_accuracy > 0.9


def test_student_with_other_classes_is_refused(digits_dir, tmp_path):
    w = numpy_helper.from_array(np.zeros((64, 5), "float32"), "W")
    g = helper.make_graph([helper.make_node("Flatten", ["input"], ["f"]),
                           helper.make_node("MatMul", ["f", "W"], ["output"])], "s",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])], [w])
    student = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError) as e:
        check_pair(onnx.load(digits_dir / "digits.onnx"), student)
    assert str(e.value) == ("the student's output shape (1, 5) differs from the teacher's (1, 10): "
                            "they must predict the same classes")
    student.ir_version = 8
    onnx.save(student, tmp_path / "s.onnx")
    assert main(["distill", "--teacher", str(digits_dir / "digits.onnx"), "--student",
                 str(tmp_path / "s.onnx"), "--data", "digits", "-o", str(tmp_path / "o.onnx")]) == 1
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 1.5}, "alpha must be in [0, 1], got 1.5"),
    ({"temperature": 0}, "temperature must be positive, got 0"),
    ({"nproc": 0}, "nproc must be at least 1, got 0"),
])
def test_bad_distill_options(kwargs, message):
    with pytest.raises(InputError) as e:
        DistillConfig(**kwargs)
    assert str(e.value) == message


def test_distill_data_errors(digits_dir, pruned_student, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((100, 1, 4, 4), "float32"), y=np.zeros(100, "int64"))
    with pytest.raises(InputError, match=r"data samples have shape \(1, 4, 4\); the student's "
                                         r"input is \(1, 1, 8, 8\)"):
        distill(digits_dir / "digits.onnx", pruned_student,
                data=datasets.load(tmp_path / "d.npz"), output=tmp_path / "o.onnx")
    np.savez(tmp_path / "e.npz", x=np.zeros((10, 1, 8, 8), "float32"))
    with pytest.raises(InputError, match="has no array y"):
        datasets.load(tmp_path / "e.npz")


def test_prune_takes_a_saved_torch_module(tmp_path, capsys):
    import zoo

    torch.manual_seed(0)
    model = zoo.DigitsCNN().eval()
    torch.save(model, tmp_path / "digits.pt")
    out = tmp_path / "p.onnx"
    assert main(["prune", str(tmp_path / "digits.pt"), "--input-shape", "input=1,1,8,8",
                 "--sparsity", "0.5", "--method", "l1-structured", "-o", str(out)]) == 0
    assert "(3.96x fewer)" in capsys.readouterr().out
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype("float32")
    assert ort_run(out, {"input": x})[0].shape == (1, 10)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    assert main(["prune", str(tmp_path / "sd.pt"), "--input-shape", "input=1,1,8,8",
                 "--sparsity", "0.5", "-o", str(tmp_path / "q.onnx")]) == 1
    assert "holds a OrderedDict, not a torch.nn.Module" in capsys.readouterr().err
    assert main(["prune", str(tmp_path / "digits.pt"), "--sparsity", "0.5", "-o",
                 str(tmp_path / "q.onnx")]) == 1
    assert "is a torch model: give its input with --input-shape" in capsys.readouterr().err
