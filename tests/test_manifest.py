import json

import pytest

from edgecc import ArtifactError
from edgecc.artifact.manifest import Manifest, TensorSpec


def _manifest(**kw):
    base = dict(model_name="m", model_sha256="0" * 64, target="x86_64", arch="x86_64",
                device="cpu", tvm_target={"kind": "llvm"}, tvm_version="0.27", edgecc_version="0",
                inputs=(TensorSpec("x", (1, 3), "float32"),),
                outputs=(TensorSpec("y", (1,), "float32"),), passes=("fuse",))
    base.update(kw)
    return Manifest(**base)


def test_round_trip(tmp_path):
    m = _manifest()
    m.write(tmp_path)
    assert Manifest.read(tmp_path) == m


def test_rejects_other_format_and_version(tmp_path):
    d = json.loads(_manifest().to_json())
    d["format_version"] = 99
    (tmp_path / "model.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="format_version 99 is not supported"):
        Manifest.read(tmp_path)
    d["format"] = "something"
    (tmp_path / "model.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="not an edgecc manifest"):
        Manifest.read(tmp_path)


def test_rejects_bad_dtype_and_missing_dir(tmp_path):
    d = json.loads(_manifest().to_json())
    d["inputs"][0]["dtype"] = "complex64"
    (tmp_path / "model.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="unsupported dtype 'complex64'"):
        Manifest.read(tmp_path)
    with pytest.raises(ArtifactError, match="no model.json"):
        Manifest.read(tmp_path / "nope")
