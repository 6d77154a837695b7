"""Remote run, benchmark and status over a real TVM RPC tracker + server on 127.0.0.1."""

import numpy as np
import pytest
from conftest import make_conv_model, ort_run, rel_err
from rpc_util import HOST, free_port, rpc_cluster

import edgecc
from edgecc.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with rpc_cluster(["loopback-cpu"]) as port:
        yield port


def test_unreachable_tracker_is_explained(capsys):
    port = free_port()
    assert main(["rpc", "status", "--tracker", f"{HOST}:{port}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach the RPC tracker at {HOST}:{port} (")
    assert "is 'python -m tvm.exec.rpc_tracker' running there?" in err


def test_status_lists_devices(cluster, capsys):
    assert main(["rpc", "status", "--tracker", f"{HOST}:{cluster}"]) == 0
    out = capsys.readouterr().out
    assert f"tracker {HOST}:{cluster}: 1 device server(s)" in out
    assert "loopback-cpu" in out and "free 1" in out


def test_unknown_key_lists_registered_keys(cluster, tmp_path, capsys):
    edgecc.compile(make_conv_model(), output=tmp_path / "a")
    assert main(["run", str(tmp_path / "a"), "--rpc-tracker", f"{HOST}:{cluster}",
                 "--rpc-key", "rpi4"]) == 1
    assert capsys.readouterr().err.startswith(
        f"error: no device with key 'rpi4' is registered at tracker {HOST}:{cluster} "
        "(registered keys: loopback-cpu)")


def test_remote_run_and_bench_match_onnxruntime(cluster, tmp_path, capsys):
    model = make_conv_model()
    edgecc.compile(model, output=tmp_path / "a")
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(tmp_path / "a"), "--input", f"x={tmp_path / 'x.npy'}", "-o",
                 str(tmp_path / "out"), "--rpc-tracker", f"{HOST}:{cluster}", "--rpc-key",
                 "loopback-cpu", "--bench", "5"]) == 0
    out = capsys.readouterr().out
    assert "ran on device 'loopback-cpu'" in out and "latency: mean" in out
    assert rel_err(np.load(tmp_path / "out" / "y.npy"), ort_run(model, {"x": x})[0]) <= 1e-4
    assert main(["bench", str(tmp_path / "a"), "--repeat", "5", "--rpc-tracker",
                 f"{HOST}:{cluster}", "--rpc-key", "loopback-cpu"]) == 0
    assert "on device 'loopback-cpu'" in capsys.readouterr().out
