"""`edgecc-run serve`: the native loader as a TVM RPC device server (no Python on the device).

Real tracker and servers on 127.0.0.1 (random ports, stopped by PID); the aarch64 server runs
under qemu-aarch64 as an emulated ARM board."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
from conftest import make_conv_model, ort_run, rel_err
from rpc_util import HOST, device_cluster, free_port, native_server

import edgecc
from edgecc.cli import main
from edgecc.remote import RemoteError, _session, remote_failure, run_remote
from edgecc.tune import RPCSettings


@pytest.fixture(scope="module")
def x86(tmp_path_factory):
    with device_cluster({"edge-x86": native_server("x86_64")}) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def conv_artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("art")
    model = make_conv_model()
    edgecc.compile(model, output=d / "x86_64", target="x86_64")
    edgecc.compile(model, output=d / "rpi4", target="rpi4")
    return model, d


def _x(seed=3):
    return np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype("float32")


def test_native_server_is_listed_runs_and_times_artifacts(x86, conv_artifacts, tmp_path, capsys):
    model, d = conv_artifacts
    assert main(["rpc", "status", "--tracker", x86.tracker]) == 0
    assert "edge-x86" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", _x())
    assert main(["run", str(d / "x86_64"), "--input", f"x={tmp_path / 'x.npy'}", "-o",
                 str(tmp_path / "out"), "--rpc-tracker", x86.tracker, "--rpc-key", "edge-x86",
                 "--bench", "3"]) == 0
    out = capsys.readouterr().out
    assert f"ran on device 'edge-x86' (x86_64, edgecc-run serve) via {x86.tracker}" in out
    assert rel_err(np.load(tmp_path / "out" / "y.npy"), ort_run(model, {"x": _x()})[0]) <= 1e-4
    assert main(["bench", str(d / "x86_64"), "--repeat", "3", "--rpc-tracker", x86.tracker,
                 "--rpc-key", "edge-x86"]) == 0
    assert "latency" not in capsys.readouterr().err


def test_architecture_mismatch_is_refused_before_upload(x86, conv_artifacts, capsys):
    _, d = conv_artifacts
    assert main(["run", str(d / "rpi4"), "--rpc-tracker", x86.tracker, "--rpc-key",
                 "edge-x86"]) == 1
    err = capsys.readouterr().err
    assert (f"error: artifact '{d / 'rpi4'}' (target rpi4) is for aarch64 but the device "
            f"'edge-x86' at {x86.tracker} is x86_64: nothing was uploaded") in err


def test_busy_device_is_a_clear_error_not_a_hang(x86, conv_artifacts):
    _, d = conv_artifacts
    settings = RPCSettings(HOST, x86.port, "edge-x86", wait_s=1.0)
    held = _session(settings)  # someone else's session keeps the only device busy
    t = time.monotonic()
    with pytest.raises(RemoteError) as e:
        run_remote(d / "x86_64", settings, {"x": _x()})
    assert time.monotonic() - t < 10
    assert str(e.value) == (f"no free device with key 'edge-x86' at {x86.tracker}: all 1 are "
                            "busy (waited 1 s); try again later or add devices")
    del held


def test_session_timeout_is_named(x86, conv_artifacts):
    _, d = conv_artifacts
    settings = RPCSettings(HOST, x86.port, "edge-x86", session_timeout_s=1)
    sess = _session(settings)
    started = time.monotonic()
    time.sleep(2.5)  # the server ends the session after 1 s
    with pytest.raises(Exception) as e:  # noqa: PT011  (TVM raises its own error types)
        sess.upload(str(d / "x86_64" / "model.so"))
    msg = str(remote_failure(e.value, settings, started, "upload"))
    assert msg.startswith("upload on 'edge-x86' hit the session timeout (1 s, "
                          "--rpc-session-timeout)"), msg


def test_serve_fails_fast_when_the_tracker_is_unreachable():
    from edgecc.native import server_command

    argv, env = server_command("x86_64", tracker=f"{HOST}:{free_port()}", key="k",
                               log=lambda _m: None)
    t = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and time.monotonic() - t < 20
    assert proc.stderr.startswith(f"error: cannot reach the RPC tracker at {HOST}:")


@pytest.mark.parametrize("args, message", [
    (["--tracker", "127.0.0.1:9"], "error: serve needs --key KEY"),
    (["--key", "k"], "error: serve needs --tracker HOST:PORT"),
    (["--key", "k", "--tracker", "nocolon"], "error: bad --tracker 'nocolon': expected HOST:PORT"),
    (["--key", "k", "--tracker", "h:1", "--bogus"], "error: unknown option '--bogus' for serve"),
])
def test_serve_bad_options(args, message):
    from edgecc.native import server_command

    argv, env = server_command("x86_64", tracker="h:1", key="k", log=lambda _m: None)
    proc = subprocess.run([argv[0], "serve", *args], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 1 and proc.stderr.startswith(message), proc.stderr


@pytest.mark.slow
def test_emulated_arm_board_runs_and_tunes_over_rpc(conv_artifacts, tmp_path, capsys):
    """aarch64 edgecc-run serve under qemu-aarch64: listed by the tracker, runs an aarch64
    artifact remotely matching ONNX Runtime, measures tuning candidates, and takes the second
    stage of a heterogeneous pipeline (stage 0 on an x86_64 device, stage 1 on the ARM board)."""
    model, d = conv_artifacts
    with device_cluster({"rpi4-emu": native_server("aarch64", threads=2),
                         "x86-edge": native_server("x86_64")}, timeout=120) as c:
        assert main(["rpc", "status", "--tracker", c.tracker]) == 0
        assert "rpi4-emu" in capsys.readouterr().out
        np.save(tmp_path / "x.npy", _x())
        assert main(["run", str(d / "rpi4"), "--input", f"x={tmp_path / 'x.npy'}", "-o",
                     str(tmp_path / "out"), "--rpc-tracker", c.tracker, "--rpc-key",
                     "rpi4-emu", "--bench", "2"]) == 0
        out = capsys.readouterr().out
        assert ("ran on device 'rpi4-emu' (aarch64, edgecc-run serve, emulated: timings only "
                "prove the path works)") in out
        assert rel_err(np.load(tmp_path / "out" / "y.npy"), ort_run(model, {"x": _x()})[0]) <= 1e-4
        onnx_path = tmp_path / "conv.onnx"
        import onnx

        onnx.save(model, onnx_path)
        assert main(["tune", str(onnx_path), "-t", "rpi4", "--trials", "2", "--log-dir",
                     str(tmp_path / "log"), "--rpc-tracker", c.tracker, "--rpc-key",
                     "rpi4-emu", "-q"]) == 0
        out = capsys.readouterr().out
        assert "records added to" in out
        rows = [ln for ln in out.splitlines() if ln.startswith("fused_")]
        assert rows and all(not ln.rstrip().endswith("n/a") for ln in rows), out

        from test_pipeline import chain_model

        onnx.save(chain_model(), tmp_path / "chain.onnx")
        assert main(["partition", str(tmp_path / "chain.onnx"), "--stages", "2", "--targets",
                     "x86_64,rpi4", "-o", str(tmp_path / "pipe")]) == 0
        assert main(["pipeline", "run", str(tmp_path / "pipe"), "--devices",
                     f"{c.tracker}:x86-edge,rpi4-emu", "--count", "3", "--verify",
                     str(tmp_path / "chain.onnx")]) == 0
        out = capsys.readouterr().out
        assert f"stage 1 on 'rpi4-emu' at {c.tracker}" in out and ": OK" in out
