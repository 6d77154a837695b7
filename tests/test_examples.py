"""Every example model, through ONNX (vs ONNX Runtime) and through torch.export (vs PyTorch)."""

import pytest
from conftest import ort_run, rel_err

import edgecc
from edgecc.runtime import load

torch = pytest.importorskip("torch")
zoo = pytest.importorskip("zoo")

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_example_onnx_matches_onnxruntime(tmp_path, name):
    model, example = zoo.build(name)
    path = tmp_path / f"{name}.onnx"
    zoo.export_onnx(model, example, path)
    r = edgecc.compile(path, output=tmp_path / "art", use_cache=False)
    feed = {"input": example.numpy()}
    got = load(tmp_path / "art").run(feed)["output"]
    assert rel_err(got, ort_run(path, feed)[0]) <= 1e-4
    assert r.manifest.inputs[0].shape == tuple(example.shape)


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_example_torch_matches_pytorch(tmp_path, name):
    model, example = zoo.build(name)
    r = edgecc.compile(model, example_inputs=(example,), output=tmp_path / "art")
    got = load(tmp_path / "art").run({r.manifest.inputs[0].name: example.numpy()})["output0"]
    with torch.no_grad():
        ref = model(example).numpy()
    assert rel_err(got, ref) <= 1e-4
