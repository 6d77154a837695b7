"""Real architectures (examples/arch_zoo.py) at reduced input sizes: each compiles for x86_64
and matches ONNX Runtime; a few with the patterns that used to crash also build for aarch64."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import arch_zoo
import edgecc
from edgecc.errors import UnsupportedOperatorError

COMPILED = [n for n in arch_zoo.ARCHS if n != "gru"]


def _feed(path, shape):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {i.name: (rng.integers(0, 100, shape).astype(np.int64) if "int" in i.type
                     else rng.standard_normal(shape).astype(np.float32))
            for i in sess.get_inputs()}
    return feed, sess.run(None, feed), [o.name for o in sess.get_outputs()]


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPILED)
def test_each_architecture_compiles_for_x86_64_and_matches_ort(name, tmp_path):
    path = tmp_path / f"{name}.onnx"
    shape = arch_zoo.export_arch(name, path, small=True)
    edgecc.compile(path, target="x86_64", output=tmp_path / "a", use_cache=False,
                   isa_variants=False)
    feed, refs, names = _feed(path, shape)
    got = edgecc.load(tmp_path / "a").run(feed)
    for n, ref in zip(names, refs, strict=True):
        err = np.max(np.abs(got[n] - ref))
        assert err <= 1e-4 * np.max(np.abs(ref)), (n, err)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shufflenetv2", "yolo", "mobilenetv3"])
def test_architectures_with_shuffles_concats_and_gating_build_for_aarch64(name, tmp_path):
    path = tmp_path / f"{name}.onnx"
    arch_zoo.export_arch(name, path, small=True)
    r = edgecc.compile(path, target="rpi4", output=tmp_path / "a", use_cache=False)
    assert (tmp_path / "a" / "model.so").read_bytes()[:4] == b"\x7fELF"
    assert (tmp_path / "a" / "model.so").read_bytes()[18] == 183  # e_machine: EM_AARCH64
    assert r.manifest.arch == "aarch64"


def test_a_recurrent_net_is_refused_with_the_op_and_its_nodes(tmp_path):
    """TVM's ONNX importer has no GRU/LSTM: one error naming the op type and its nodes."""
    path = tmp_path / "gru.onnx"
    arch_zoo.export_arch("gru", path, small=True)
    with pytest.raises(UnsupportedOperatorError) as e:
        edgecc.compile(path, output=tmp_path / "a", use_cache=False)
    assert str(e.value) == "1 unsupported operator type(s): GRU (nodes: /gru/GRU, /gru/GRU_1)"
    assert not (tmp_path / "a").exists()
