"""Real TVM RPC tracker and device servers on 127.0.0.1 for tests: random free ports, stopped by
PID with all their children (the server leaves popen workers behind)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import psutil

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    try:
        parent = psutil.Process(proc.pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=5)
    for p in alive:
        p.kill()
    proc.wait(timeout=5)


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not come up within {timeout} s")


def _tracker_keys(port: int) -> list[str]:
    from edgecc.remote import tracker_status

    try:
        return [k for _, k in tracker_status(HOST, port).servers]
    except Exception:  # noqa: BLE001  (not up yet)
        return []


@contextmanager
def rpc_cluster(keys: list[str]):
    """Start a tracker and one CPU device server per key; yield the tracker port."""
    procs: list[subprocess.Popen] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    port = free_port()
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", HOST, "--port", str(port),
             "--port-end", str(port + 1), "--silent"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for(lambda: _tracker_keys(port) is not None and _can_connect(port), 30, "tracker")
        for key in keys:
            sport = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tvm.exec.rpc_server", "--host", HOST, "--port",
                 str(sport), "--port-end", str(sport + 1), "--tracker", f"{HOST}:{port}",
                 "--key", key, "--silent"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for(lambda: sorted(_tracker_keys(port)) == sorted(keys), 60, "device servers")
        yield port
    finally:
        for p in reversed(procs):
            _stop(p)


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False
