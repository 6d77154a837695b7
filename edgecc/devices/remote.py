"""Devices behind a TVM RPC tracker: status, remote run and benchmark (like tvmc's remote run).

Uses TVM's own RPC protocol and tracker (``python -m tvm.exec.rpc_tracker``) with any TVM RPC
server on the device: ``edgecc-run serve`` (native, no Python) or ``python -m tvm.exec.rpc_server``.
``edgecc-run serve`` also answers ``edgecc.device_info`` (architecture, threads), so an artifact
for the wrong architecture is refused before it is uploaded.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgeccError
from ..artifact.manifest import Manifest
from ..runtime import BenchmarkResult, check_inputs, summarize
from .rpc import RPCSettings

CONNECT_TIMEOUT_S = 5.0


class RemoteError(EdgeccError):
    """The tracker or a device cannot be reached or used."""


@dataclass(frozen=True)
class TrackerStatus:
    address: str
    servers: tuple[tuple[str, str], ...]  # (address, key)
    queues: dict[str, tuple[int, int]]  # key -> (free, pending)

    def format(self) -> str:
        lines = [f"tracker {self.address}: {len(self.servers)} device server(s)"]
        keys = sorted({k for _, k in self.servers} | set(self.queues))
        if not keys:
            lines.append("  no device is registered (on the device: edgecc-run serve --tracker "
                         "HOST:PORT --key KEY, from an 'edgecc package' bundle; or python -m "
                         "tvm.exec.rpc_server --tracker HOST:PORT --key KEY)")
        for key in keys:
            total = sum(1 for _, k in self.servers if k == key)
            free, pending = self.queues.get(key, (0, 0))
            addrs = ", ".join(a for a, k in self.servers if k == key)
            lines.append(f"  {key:<16} total {total}  free {free}  pending {pending}"
                         + (f"  ({addrs})" if addrs else ""))
        return "\n".join(lines)


def _check_reachable(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise RemoteError(f"cannot reach the RPC tracker at {host}:{port} ({e.strerror or e}); "
                          "is 'python -m tvm.exec.rpc_tracker' running there?") from None


def tracker_status(host: str, port: int) -> TrackerStatus:
    _check_reachable(host, port)
    from tvm import rpc  # noqa: PLC0415

    try:
        tracker = rpc.connect_tracker(host, port)
        data = tracker.summary()
    except (RuntimeError, OSError) as e:
        raise RemoteError(f"{host}:{port} did not answer as a TVM RPC tracker: {e}") from None
    servers = tuple((":".join(map(str, s["addr"])), s["key"].split(":", 1)[-1])
                    for s in data.get("server_info", []))
    queues = {k: (int(v["free"]), int(v["pending"]))
              for k, v in data.get("queue_info", {}).items()}
    return TrackerStatus(f"{host}:{port}", servers, queues)


def check_device(settings: RPCSettings) -> TrackerStatus:
    status = tracker_status(settings.tracker_host, settings.tracker_port)
    keys = sorted({k for _, k in status.servers})
    if settings.key not in keys:
        known = ", ".join(keys) if keys else "none"
        raise RemoteError(f"no device with key {settings.key!r} is registered at tracker "
                          f"{status.address} (registered keys: {known})")
    return status


def wait_for_free_device(settings: RPCSettings) -> TrackerStatus:
    """The tracker's status once a device with the key is free; a clear error (not a hang) when
    every such device stays busy for ``settings.wait_s``."""
    status = check_device(settings)
    deadline = time.monotonic() + settings.wait_s
    while status.queues.get(settings.key, (0, 0))[0] == 0:
        if time.monotonic() > deadline:
            total = sum(1 for _, k in status.servers if k == settings.key)
            raise RemoteError(f"no free device with key {settings.key!r} at {status.address}: "
                              f"all {total} are busy (waited {settings.wait_s:.0f} s); try again "
                              "later or add devices")
        time.sleep(0.25)
        status = check_device(settings)
    return status


def _session(settings: RPCSettings):
    from tvm import rpc  # noqa: PLC0415

    wait_for_free_device(settings)
    try:
        return request_session(settings.tracker_host, settings.tracker_port, settings.key,
                               session_timeout_s=settings.session_timeout_s,
                               token=settings.token)
    except (RuntimeError, OSError) as e:
        raise RemoteError(f"no session with a {settings.key!r} device at "
                          f"{settings.tracker_host}:{settings.tracker_port}: {e}") from None


def request_session(tracker_host: str, tracker_port: int, key: str, *,
                    session_timeout_s: float, token: str | None, max_retry: int = 2):
    """A session with a ``key`` device through the tracker, presenting ``token`` to the server
    (``edgecc-run serve`` refuses sessions without its token). TVM's ``TrackerSession.request``
    connects with the tracker's match key alone, so with a token the request is made here: the
    same two messages, then ``rpc.connect`` with ``<matchkey> -token=<token>`` as the key."""
    from tvm import rpc  # noqa: PLC0415
    from tvm.rpc import base  # noqa: PLC0415

    tracker = rpc.connect_tracker(tracker_host, tracker_port)
    if not token:
        return tracker.request(key, priority=1, session_timeout=session_timeout_s,
                               max_retry=max_retry)
    last: Exception | None = None
    for _ in range(max_retry):
        try:
            if tracker._sock is None:  # noqa: SLF001  (TVM's client keeps its socket here)
                tracker._connect()  # noqa: SLF001
            base.sendjson(tracker._sock, [base.TrackerCode.REQUEST, key, "", 1])  # noqa: SLF001
            value = base.recvjson(tracker._sock)  # noqa: SLF001
            if value[0] != base.TrackerCode.SUCCESS:
                raise RuntimeError(f"the tracker answered {value!s}")
            url, port, matchkey = value[1]
            return rpc.connect(url, port, f"{matchkey} -token={token}", session_timeout_s)
        except (OSError, RuntimeError) as e:
            last = e
            tracker.close()
    raise RuntimeError(f"cannot get a session for {key!r} from the tracker: "
                       f"{type(last).__name__}: {last}")


def session_for_config(rpc_config, *, token: str):
    """MetaSchedule's ``f_create_session`` with a token (runs in its measurement workers)."""
    return request_session(rpc_config.tracker_host, rpc_config.tracker_port,
                           rpc_config.tracker_key, session_timeout_s=rpc_config.session_timeout_sec,
                           token=token)


def device_info(sess) -> dict | None:
    """The device's ``{"arch", "server", "threads"}`` if its server is ``edgecc-run serve``; None
    for servers that cannot tell (TVM's Python server)."""
    import json  # noqa: PLC0415

    try:
        f = sess.get_function("edgecc.device_info")
    except Exception:  # noqa: BLE001  (the remote raises a generic error for unknown functions)
        return None
    return json.loads(str(f()))


def check_arch(sess, *, arch: str, what: str, settings: RPCSettings) -> dict | None:
    """Refuse (before any upload) when the device's architecture is not ``arch``."""
    info = device_info(sess)
    if info is not None and info.get("arch") != arch:
        raise RemoteError(f"{what} is for {arch} but the device {settings.key!r} at "
                          f"{settings.tracker_host}:{settings.tracker_port} is {info.get('arch')}: "
                          "nothing was uploaded")
    return info


def probe_device(settings: RPCSettings, *, arch: str, what: str) -> dict | None:
    """Open a short session to check the device's architecture (see :func:`check_arch`)."""
    sess = _session(settings)
    return check_arch(sess, arch=arch, what=what, settings=settings)


@dataclass(frozen=True)
class RemoteRun:
    outputs: dict[str, np.ndarray]
    bench: BenchmarkResult | None
    device: dict | None  # edgecc.device_info of an edgecc-run server, else None

    def where(self, settings: RPCSettings) -> str:
        """``device 'rpi4' (aarch64, emulated: ...) via host:port`` for messages."""
        extra = ""
        if self.device:
            extra = f" ({self.device.get('arch')}, edgecc-run serve"
            if self.device.get("emulated"):
                extra += ", emulated: timings only prove the path works"
            extra += ")"
        return f"device {settings.key!r}{extra} via {settings.tracker_host}:{settings.tracker_port}"


def remote_failure(e: BaseException, settings: RPCSettings, started: float,
                   what: str) -> RemoteError:
    """A RemoteError for an RPC call that failed: a session timeout says so."""
    elapsed = time.monotonic() - started
    last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    if elapsed >= settings.session_timeout_s - 0.5 or "SessionTimeout" in str(e):
        return RemoteError(f"{what} on {settings.key!r} hit the session timeout "
                           f"({settings.session_timeout_s} s, --rpc-session-timeout): {last}")
    return RemoteError(f"{what} on {settings.key!r} failed: {type(e).__name__}: {last}")


def remote_leaves(sess, result, count: int) -> list:
    """The output tensors of a remote VM call: a tensor, or a remote Array of them (which stays
    on the device as an object reference: its items are fetched with the remote's own
    ``ffi.ArrayGetItem``)."""
    if hasattr(result, "numpy"):
        return [result]
    if isinstance(result, list | tuple):
        return list(result)
    get = sess.get_function("ffi.ArrayGetItem")
    return [get(result, i) for i in range(count)]


class RemoteArtifact:
    """An artifact uploaded to one RPC device and loaded in its Relax VM, for repeated calls
    (``edgecc run/bench`` on a device, a pipeline stage). The device's architecture is checked
    before the upload."""

    def __init__(self, artifact: str | Path, settings: RPCSettings, *, what: str | None = None,
                 remote_name: str | None = None):
        from tvm import relax  # noqa: PLC0415

        artifact = Path(artifact)
        self.manifest = Manifest.read(artifact)
        if self.manifest.device != "cpu":
            raise RemoteError("remote run supports CPU artifacts only for now")
        self.settings = settings
        self.sess = _session(settings)
        self.device = check_arch(
            self.sess, arch=self.manifest.arch, settings=settings,
            what=what or f"artifact '{artifact}' (target {self.manifest.target})")
        self.started = time.monotonic()
        name = remote_name or self.manifest.library
        self.sess.upload(str(artifact / self.manifest.library), name)
        self.dev = self.sess.cpu()
        self.vm = relax.VirtualMachine(self.sess.load_module(name), self.dev)

    def upload_inputs(self, arrays) -> list:
        """Inputs (manifest order) copied to the device."""
        import tvm  # noqa: PLC0415

        return [tvm.runtime.tensor(np.asarray(a, order="C"), self.dev) for a in arrays]

    def run_uploaded(self, args) -> dict[str, np.ndarray]:
        result = self.vm["main"](*args)
        leaves = remote_leaves(self.sess, result, len(self.manifest.outputs))
        return {s.name: t.numpy() for s, t in zip(self.manifest.outputs, leaves, strict=True)}

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on the device with the inputs in ``feed`` (extra entries are ignored)."""
        return self.run_uploaded(self.upload_inputs([feed[s.name] for s in self.manifest.inputs]))


def run_remote(artifact: str | Path, settings: RPCSettings, inputs: Mapping[str, np.ndarray], *,
               bench_repeat: int = 0, bench_number: int = 1) -> RemoteRun:
    """Upload the artifact to a device, run it there, bring the outputs back (and time it)."""
    artifact = Path(artifact)
    arrays = check_inputs(Manifest.read(artifact).inputs, inputs)
    started = time.monotonic()
    try:
        remote = RemoteArtifact(artifact, settings)
        args = remote.upload_inputs(arrays)
        outputs = remote.run_uploaded(args)
        bench = None
        if bench_repeat:
            timer = remote.vm.time_evaluator("main", remote.dev, number=bench_number,
                                             repeat=bench_repeat)
            bench = summarize(list(timer(*args).results), number=bench_number)
    except (RuntimeError, OSError) as e:  # TVM's RPC errors are RuntimeErrors
        raise remote_failure(e, settings, started, "remote run") from None
    return RemoteRun(outputs, bench, remote.device)
