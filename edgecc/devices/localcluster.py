"""A TVM RPC tracker and device servers on 127.0.0.1 (random free ports), stopped by PID with all
their children: what the tests and the pipeline benchmark run against, and a quick way to try
remote runs on one machine. Servers are TVM's Python server or ``edgecc-run serve`` (natively, or
an aarch64 one under qemu-aarch64). Nothing listens on any other address."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

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
    from .remote import tracker_status

    try:
        return [k for _, k in tracker_status(HOST, port).servers]
    except Exception:  # noqa: BLE001  (not up yet)
        return []


@dataclass
class Cluster:
    """A tracker on 127.0.0.1 and its device servers (key -> process)."""

    port: int
    servers: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def tracker(self) -> str:
        return f"{HOST}:{self.port}"

    def stop_server(self, key: str) -> None:
        """Kill one device server (by PID, with its children): a device dropping off."""
        _stop(self.servers[key])


def python_server(key: str, tracker_port: int):
    """TVM's Python RPC server."""
    sport = free_port()
    return ([sys.executable, "-m", "tvm.exec.rpc_server", "--host", HOST, "--port", str(sport),
             "--port-end", str(sport + 1), "--tracker", f"{HOST}:{tracker_port}", "--key", key,
             "--silent"], dict(os.environ, PYTHONUNBUFFERED="1"))


def native_server(arch: str, *, threads: int = 1, extra: tuple[str, ...] = ("--no-token",)):
    """``edgecc-run serve`` for ``arch`` (aarch64 runs under qemu-aarch64), with ``extra``
    options: by default ``--no-token`` (these clusters listen on 127.0.0.1 only; pass
    ``("--token-file", F)`` for a server that asks clients for its token)."""
    from ..deploy.native import server_command

    def make(key: str, tracker_port: int):
        return server_command(arch, tracker=f"{HOST}:{tracker_port}", key=key, host=HOST,
                              port=0, threads=threads, extra=extra, log=lambda _m: None)
    return make


@contextmanager
def device_cluster(servers: dict[str, object], *, timeout: float = 60):
    """Start a tracker and one device server per key (key -> command factory, e.g.
    ``python_server`` or ``native_server("aarch64")``); yield a :class:`Cluster`."""
    procs: list[subprocess.Popen] = []
    port = free_port()
    cluster = Cluster(port)
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", HOST, "--port", str(port),
             "--port-end", str(port + 1), "--silent"],
            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        _wait_for(lambda: _can_connect(port), 30, "tracker")
        for key, make in servers.items():
            argv, env = make(key, port)
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            procs.append(proc)
            cluster.servers[key] = proc
        _wait_for(lambda: sorted(_tracker_keys(port)) == sorted(servers), timeout,
                  "device servers")
        yield cluster
    finally:
        for p in reversed(procs):
            _stop(p)


@contextmanager
def rpc_cluster(keys: list[str]):
    """Start a tracker and one Python CPU device server per key; yield the tracker port."""
    with device_cluster({k: python_server for k in keys}) as cluster:
        yield cluster.port


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False
