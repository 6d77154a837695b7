"""`edgecc-run serve`: the native loader as a TVM RPC device server (no Python on the device).

Real tracker and servers on 127.0.0.1 (random ports, stopped by PID); the aarch64 server runs
under qemu-aarch64 as an emulated ARM board."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_conv_model, ort_run, rel_err
from rpc_util import HOST, device_cluster, free_port, native_server

import edgecc
from edgecc.cli import main
from edgecc.devices.remote import RemoteError, _session, remote_failure, run_remote
from edgecc.devices.rpc import RPCSettings


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
    out = capsys.readouterr().out  # timed on the device: a summary of real, positive times
    p50 = float(re.search(r"p50 ([0-9.]+) ms", out).group(1))
    assert "on device 'edge-x86'" in out and "; 3 repeats x" in out and p50 > 0


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
    from edgecc.deploy.native import server_command

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
    from edgecc.deploy.native import server_command

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


def test_serve_refuses_escaping_names_and_oversized_uploads_and_keeps_serving(conv_artifacts):
    """Upload and load names are relative to the session's work directory (no absolute path, no
    '..'); an upload over --max-upload-mb is refused with a named error; the server serves the
    next session as before."""
    _, d = conv_artifacts
    with device_cluster({"capped": native_server("x86_64", extra=("--max-upload-mb", "1",
                                                                   "--no-token"))}
                        ) as cluster:
        settings = RPCSettings(HOST, cluster.port, "capped")
        sess = _session(settings)
        for name in ("../escape.so", "/tmp/edgecc-abs.so", "a/../../b.so"):
            with pytest.raises(Exception, match=f"edgecc-run serve refuses the file name "
                                                f"'{name}': names are relative to the "
                                                "session's work directory"):
                sess.upload(bytearray(b"x"), name)
        with pytest.raises(Exception, match="edgecc-run serve refuses the upload 'big.bin': 2 "
                                            "MiB, over its --max-upload-mb 1"):
            sess.upload(bytearray(2 << 20), "big.bin")
        with pytest.raises(Exception, match="refuses the file name '../model.so'"):
            sess.load_module("../model.so")
        sess.upload(bytearray(b"small"), "ok.bin")  # a name inside the work directory is fine
        del sess
        assert not any(p.name.startswith("edgecc-abs") for p in Path("/tmp").iterdir())
        out = run_remote(d / "x86_64", settings, {"x": _x()})  # the server keeps serving
        assert rel_err(out.outputs["y"], ort_run(make_conv_model(), {"x": _x()})[0]) <= 1e-4
        assert cluster.servers["capped"].poll() is None


def test_a_server_with_a_token_refuses_sessions_without_it(conv_artifacts, tmp_path, capsys):
    """First start makes the token file and prints the token once; a client with the token file
    runs (API and CLI); no token or a wrong one is refused, the server keeps serving."""
    from edgecc.deploy.native import server_command

    _, d = conv_artifacts
    token_file = tmp_path / "cfg" / "serve-token"
    with device_cluster({"locked": native_server("x86_64", extra=("--token-file",
                                                                  str(token_file)))}) as cluster:
        token = token_file.read_text().strip()
        assert len(token) == 32 and (token_file.stat().st_mode & 0o777) == 0o600
        good = RPCSettings.parse(f"{HOST}:{cluster.port}", "locked", token_file=token_file)
        assert token not in repr(good)
        out = run_remote(d / "x86_64", good, {"x": _x()})
        assert rel_err(out.outputs["y"], ort_run(make_conv_model(), {"x": _x()})[0]) <= 1e-4
        wrong = tmp_path / "wrong"
        wrong.write_text("0" * 32 + "\n")
        for settings in (RPCSettings(HOST, cluster.port, "locked", wait_s=2),
                         RPCSettings.parse(f"{HOST}:{cluster.port}", "locked",
                                           token_file=wrong)):
            with pytest.raises(RemoteError, match="no session with a 'locked' device"):
                _session(settings)
        np.save(tmp_path / "x.npy", _x())
        assert main(["run", str(d / "x86_64"), "--rpc-tracker", f"{HOST}:{cluster.port}",
                     "--rpc-key", "locked", "--rpc-token-file", str(token_file),
                     "--input", f"x={tmp_path / 'x.npy'}"]) == 0
        assert cluster.servers["locked"].poll() is None
    # the token is printed on the first start only; a second start reads the file
    argv, env = server_command("x86_64", tracker=f"{HOST}:{free_port()}", key="k",
                               extra=("--token-file", str(token_file)), log=lambda _m: None)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert token not in proc.stdout and proc.returncode == 1  # (no tracker: exits)


def test_no_token_on_an_address_that_is_not_loopback_warns():
    """The warning comes before the server listens (here it never does: the address is not
    one, so nothing is bound beyond loopback)."""
    from edgecc.deploy.native import server_command

    argv, env = server_command("x86_64", tracker=f"{HOST}:{free_port()}", key="k",
                               host="all-interfaces", extra=("--no-token",), log=lambda _m: None)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stderr.split("\n")[:2] == [
        "[edgecc-run serve] warning: --no-token on all-interfaces: anyone who can reach this "
        "port can run code on this device",
        "error: --host must be an IPv4 address, got 'all-interfaces'"]


# ----------------------------------------------------------------------------- faults and load

def _footprint(server):
    """What a session could leave behind: the server's open files, its children, work dirs."""
    return (server.num_fds(), len(server.children()),
            sorted(str(p) for p in Path("/tmp").glob("edgecc-rpc-*")))


def _settled(server, timeout=20.0):
    """Wait until the server has no session child left."""
    deadline = time.monotonic() + timeout
    while server.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the work directory goes right after the child


@pytest.mark.slow
def test_two_hundred_sessions_leave_nothing_behind():
    import json

    import psutil

    with device_cluster({"many": native_server("x86_64")}) as cluster:
        server = psutil.Process(cluster.servers["many"].pid)
        settings = RPCSettings(HOST, cluster.port, "many")
        sess = _session(settings)
        del sess
        _settled(server)
        before = _footprint(server)
        for i in range(200):
            sess = _session(settings)
            info = json.loads(sess.get_function("edgecc.device_info")())
            sess.upload(bytearray(b"%d" % i) * 256, "f.bin")
            del sess
            assert info["server"] == "edgecc-run"
        _settled(server)
        assert _footprint(server) == before
        assert cluster.servers["many"].poll() is None


def test_a_session_killed_mid_run_is_a_named_error_and_the_server_keeps_serving(conv_artifacts):
    import threading

    import psutil

    model, d = conv_artifacts
    with device_cluster({"victim": native_server("x86_64")}) as cluster:
        server = psutil.Process(cluster.servers["victim"].pid)
        settings = RPCSettings(HOST, cluster.port, "victim")
        _settled(server)
        before = _footprint(server)
        failure = {}

        def client():  # a benchmark long enough to be killed in the middle of it
            try:
                run_remote(d / "x86_64", settings, {"x": _x()}, bench_repeat=200000,
                           bench_number=10)
            except RemoteError as e:
                failure["error"] = str(e)

        thread = threading.Thread(target=client)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # uploaded, loaded, timing
        for child in server.children():
            child.kill()  # SIGKILL
        thread.join(120)
        assert not thread.is_alive()
        assert "on 'victim' failed" in failure.get("error", ""), failure
        _settled(server)
        assert _footprint(server) == before
        out = run_remote(d / "x86_64", settings, {"x": _x()})  # the next session is served
        assert rel_err(out.outputs["y"], ort_run(model, {"x": _x()})[0]) <= 1e-4


UPLOADER = """
import sys
from edgecc.devices.remote import _session
from edgecc.devices.rpc import RPCSettings
s = _session(RPCSettings("127.0.0.1", int(sys.argv[1]), "upload"))
print("connected", flush=True)
s.upload(bytearray(1 << 30), "big.bin")
"""


def test_a_client_killed_mid_upload_a_truncated_library_and_a_silent_client(conv_artifacts):
    """The client dies while 1 GiB is on its way; a half library is uploaded and loaded; a
    client connects and says nothing: each is refused or cleaned up, and the server serves the
    next session."""
    import socket
    import sys

    import psutil

    model, d = conv_artifacts
    with device_cluster({"upload": native_server("x86_64", extra=(
            "--no-token", "--max-upload-mb", "2048"))}) as cluster:
        server = psutil.Process(cluster.servers["upload"].pid)
        settings = RPCSettings(HOST, cluster.port, "upload")
        _settled(server)
        before = _footprint(server)
        proc = subprocess.Popen([sys.executable, "-c", UPLOADER, str(cluster.port)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "connected\n"
        time.sleep(0.1)
        proc.kill()
        proc.wait(timeout=30)
        _settled(server)
        assert _footprint(server) == before

        sess = _session(settings)
        lib = (d / "x86_64" / "model.so").read_bytes()
        sess.upload(bytearray(lib[: len(lib) // 2]), "model.so")
        with pytest.raises(Exception, match="edgecc-run serve refuses to load 'model.so': "
                                            f"{len(lib) // 2} bytes, its headers say at least"):
            sess.load_module("model.so")
        del sess
        _settled(server)
        assert _footprint(server) == before

        from edgecc.devices.remote import tracker_status

        [address] = [a for a, k in tracker_status(HOST, cluster.port).servers if k == "upload"]
        host, port = address.rsplit(":", 1)
        silent = socket.create_connection((host, int(port)))  # a handshake that never comes
        try:
            out = run_remote(d / "x86_64", settings, {"x": _x()})
        finally:
            silent.close()
        assert rel_err(out.outputs["y"], ort_run(model, {"x": _x()})[0]) <= 1e-4
        _settled(server)
        assert _footprint(server) == before
        assert cluster.servers["upload"].poll() is None


def test_a_server_stopped_mid_session_leaves_no_work_directory():
    """SIGTERM (how a service manager, or these tests, stop it) ends the session and removes
    its work directory before the server exits."""
    import psutil

    with device_cluster({"stopping": native_server("x86_64")}) as cluster:
        settings = RPCSettings(HOST, cluster.port, "stopping")
        sess = _session(settings)
        sess.upload(bytearray(b"x"), "marker.bin")
        [work] = [d for d in Path("/tmp").glob("edgecc-rpc-*") if (d / "marker.bin").exists()]
        server = psutil.Process(cluster.servers["stopping"].pid)
        assert server.children()
        cluster.servers["stopping"].terminate()  # SIGTERM to the server alone
        assert cluster.servers["stopping"].wait(timeout=20) == 0
        assert not work.exists()
        del sess
