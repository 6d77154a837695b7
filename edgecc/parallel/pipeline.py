"""Run a partitioned model (``edgecc partition``) as a pipeline over several devices.

Each stage runs on its own device (an RPC session per stage; ``local`` runs it in this process).
Items stream through: one thread per stage takes item n from its queue while the next stage works
on item n-1, so with S devices up to S items are in flight. Every stage gets the tensors it needs
from the item's environment (model inputs and earlier stages' outputs); on this host they travel
device -> host -> device, which is what "bytes between stages" counts.

Faults: an error on any stage stops the run with the stage and the device named; a stage call that
does not come back within ``stage_timeout_s`` (a device that vanished without closing its socket)
does too, so a dead device never hangs the pipeline.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EdgeccError, InputError
from .partition import Pipeline, Stage
from ..devices.remote import RemoteArtifact
from ..devices.rpc import RPCSettings


class PipelineError(EdgeccError):
    """A stage failed or a device stopped answering."""


@dataclass(frozen=True)
class Devices:
    """Where stages run: ``local`` or keys at one tracker (stage i -> keys[i])."""

    tracker_host: str | None
    tracker_port: int | None
    keys: tuple[str, ...]
    token: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str, *, token_file=None) -> Devices:
        """``local``, or ``HOST:PORT:key1,key2,...``; ``token_file``: the devices' token."""
        if text == "local":
            return cls(None, None, ())
        host, sep, rest = text.rpartition(":")
        port_host, sep2, port = host.rpartition(":")
        if not sep or not sep2 or not port.isdigit() or not rest:
            raise InputError(f"bad --devices {text!r}: expected HOST:PORT:KEY1,KEY2,... or 'local'")
        keys = tuple(k for k in rest.split(",") if k)
        from ..devices.rpc import read_token  # noqa: PLC0415

        return cls(port_host, int(port), keys, read_token(token_file) if token_file else None)

    def for_stage(self, index: int) -> RPCSettings | None:
        if self.tracker_host is None:
            return None
        return RPCSettings(self.tracker_host, self.tracker_port, self.keys[index],
                           token=self.token)

    def describe(self, index: int) -> str:
        s = self.for_stage(index)
        return "local" if s is None else f"{s.key!r} at {s.tracker_host}:{s.tracker_port}"


@dataclass(frozen=True)
class PipelineRun:
    outputs: list[dict[str, np.ndarray]]  # per item, the model outputs by name
    latencies_ms: list[float]  # per item, from entering stage 0 to leaving the last stage
    seconds: float
    bytes_between_stages: int  # per inference
    intervals: list[list[tuple[float, float]]]  # per stage, (start, end) of each item's call

    def overlap_s(self, a: int, b: int) -> float:
        """Seconds during which stages ``a`` and ``b`` were both computing (pipelining)."""
        total = 0.0
        for s0, e0 in self.intervals[a]:
            for s1, e1 in self.intervals[b]:
                total += max(0.0, min(e0, e1) - max(s0, s1))
        return total

    @property
    def throughput(self) -> float:
        return len(self.outputs) / self.seconds

    def describe(self) -> str:
        lat = self.latencies_ms
        return (f"{len(self.outputs)} item(s) in {self.seconds:.3f} s: throughput "
                f"{self.throughput:.1f} items/s, latency p50 {statistics.median(lat):.2f} ms "
                f"(max {max(lat):.2f} ms), {self.bytes_between_stages / 1024:.1f} KiB between "
                "stages per inference")


class _LocalStage:
    def __init__(self, directory: Path, stage: Stage):
        from ..runtime import load  # noqa: PLC0415

        self.model = load(directory / stage.artifact)
        self.names = [t.name for t in self.model.manifest.inputs]

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.run({n: feed[n] for n in self.names})


def _check_items(pipe: Pipeline, items: Sequence[Mapping[str, np.ndarray]]) -> None:
    if not items:
        raise InputError("no input items to run")
    for spec in pipe.model_inputs:
        for i, item in enumerate(items):
            if spec.name not in item:
                raise InputError(f"item {i} has no input '{spec.name}'")
            a = item[spec.name]
            if tuple(a.shape) != spec.shape or str(a.dtype) != spec.dtype:
                raise InputError(f"item {i}: input '{spec.name}' is {a.dtype}{list(a.shape)}, "
                                 f"expected {spec.dtype}{list(spec.shape)}")


def run_pipeline(directory: str | Path, items: Sequence[Mapping[str, np.ndarray]], *,
                 devices: Devices, stage_timeout_s: float = 30.0, warmup: int = 1) -> PipelineRun:
    """Stream ``items`` (dicts of model inputs) through the pipeline's stages on ``devices``.
    ``warmup`` items (copies of the first) run through every stage first, untimed."""
    directory = Path(directory)
    pipe = Pipeline.read(directory)
    _check_items(pipe, items)
    n_stages = len(pipe.stages)
    if devices.tracker_host is not None and len(devices.keys) < n_stages:
        raise InputError(f"the pipeline has {n_stages} stages but --devices names "
                         f"{len(devices.keys)} device key(s): give one per stage")
    runners = []
    for stage in pipe.stages:
        settings = devices.for_stage(stage.index)
        try:
            runners.append(_LocalStage(directory, stage) if settings is None else RemoteArtifact(
                directory / stage.artifact, settings, remote_name=f"stage{stage.index}.so",
                what=f"stage {stage.index} (target {stage.target})"))
        except EdgeccError as e:
            raise PipelineError(f"stage {stage.index} on {devices.describe(stage.index)}: "
                                f"{e}") from None
        except Exception as e:  # noqa: BLE001  (RPC/TVM errors of any type)
            raise PipelineError(f"stage {stage.index} on {devices.describe(stage.index)}: "
                                f"setting up failed: {type(e).__name__}: {_last_line(e)}") from None

    for _ in range(warmup):  # first calls pay for thread pools and lazy initialisation
        env = dict(items[0])
        for k, run in enumerate(runners):
            try:
                env.update(run(env))
            except Exception as e:  # noqa: BLE001
                raise PipelineError(f"stage {k} on {devices.describe(k)} failed on warm-up: "
                                    f"{type(e).__name__}: {_last_line(e)}") from None

    queues = [queue.Queue() for _ in range(n_stages + 1)]
    busy_since: list[float | None] = [None] * n_stages
    failure: list[PipelineError] = []
    intervals: list[list[tuple[float, float]]] = [[] for _ in range(n_stages)]
    stop = threading.Event()

    def worker(k: int) -> None:
        while not stop.is_set():
            job = queues[k].get()
            if job is None:
                queues[k + 1].put(None)
                return
            index, env, t0 = job
            busy_since[k] = time.monotonic()
            t_start = time.perf_counter()
            try:
                out = runners[k](env)
                intervals[k].append((t_start, time.perf_counter()))
            except Exception as e:  # noqa: BLE001
                failure.append(PipelineError(
                    f"stage {k} on {devices.describe(k)} failed on item {index}: "
                    f"{type(e).__name__}: {_last_line(e)}"))
                stop.set()
                queues[-1].put(None)
                return
            finally:
                busy_since[k] = None
            queues[k + 1].put((index, {**env, **out}, t0))

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(n_stages)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    for i, item in enumerate(items):
        queues[0].put((i, dict(item), time.perf_counter()))
    queues[0].put(None)
    results: dict[int, tuple[dict, float]] = {}
    while len(results) < len(items):
        try:
            job = queues[-1].get(timeout=0.2)
        except queue.Empty:
            job = ...
        if failure:
            stop.set()
            raise failure[0]
        if job is None:
            break
        if job is not ...:
            index, env, t0 = job
            results[index] = ({n: env[n] for n in pipe.model_outputs},
                              (time.perf_counter() - t0) * 1e3)
        now = time.monotonic()
        for k, since in enumerate(busy_since):
            if since is not None and now - since > stage_timeout_s:
                stop.set()
                raise PipelineError(f"stage {k} on {devices.describe(k)} did not answer within "
                                    f"{stage_timeout_s:.0f} s (device gone?); pipeline stopped")
    seconds = time.perf_counter() - start
    if failure:
        raise failure[0]
    return PipelineRun([results[i][0] for i in range(len(items))],
                       [results[i][1] for i in range(len(items))], seconds,
                       pipe.bytes_between_stages, intervals)


def _last_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[-1] if s else type(e).__name__
