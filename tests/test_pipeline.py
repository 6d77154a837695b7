"""Model parallelism: partition a model into stages (cost-balanced cuts), compile each, and run
the stages as a pipeline on several devices: in process, and on real edgecc-run RPC servers on
127.0.0.1 (including a device that dies mid-run)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import onnx
import pytest
from conftest import ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper
from rpc_util import device_cluster, native_server

from edgecc.cli import main
from edgecc.errors import InputError, ModelError
from edgecc.parallel.partition import partition, plan
from edgecc.parallel.pipeline import Devices, PipelineError, run_pipeline


def chain_model(channels=(3, 8, 16, 16, 8), size: int = 16) -> onnx.ModelProto:
    """x -> [Conv 3x3 -> Relu] x len(channels)-1 -> y: a chain with known per-layer FLOPs."""
    rng = np.random.default_rng(0)
    nodes, inits, last = [], [], "x"
    for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((cout, cin, 3, 3)) * 0.3).astype("float32"), f"W{i}"))
        nodes += [helper.make_node("Conv", [last, f"W{i}"], [f"c{i}"], pads=[1, 1, 1, 1],
                                   name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        last = f"r{i}"
    nodes[-1].output[0] = "y"
    g = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                       [1, channels[0], size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels[-1], size, size])],
        inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _items(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype("float32")} for _ in range(n)]


# ----------------------------------------------------------------------------- planning

def test_plan_balances_flops():
    # conv FLOPs per layer: 3*8, 8*16, 16*16, 16*8 (x 2*9*256): shares 24, 128, 256, 128 of 536
    model = chain_model()
    assert plan(model, 1) == [(0, 8)]
    # cuts only after a Relu (conv+relu fuse into one kernel): best max stage 384 = 256 + 128
    assert plan(model, 2, link_cost=0) == [(0, 4), (4, 8)]
    assert plan(model, 3, link_cost=0) == [(0, 4), (4, 6), (6, 8)]  # 152 | 256 | 128


def test_too_many_stages_is_refused(tmp_path):
    onnx.save(chain_model(), tmp_path / "m.onnx")
    with pytest.raises(ModelError) as e:
        partition(tmp_path / "m.onnx", stages=5, output=tmp_path / "p")
    assert str(e.value) == ("cannot cut 5 stages: the model has only 4 layer(s) (Conv, "
                            "ConvTranspose, Gemm, MatMul nodes); use at most 4 stages")
    assert not (tmp_path / "p").exists()
    with pytest.raises(InputError, match="--targets lists 2 target"):
        partition(tmp_path / "m.onnx", stages=3, output=tmp_path / "p",
                  targets=["x86_64", "rpi4"])


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    onnx.save(chain_model(), d / "m.onnx")
    assert main(["partition", str(d / "m.onnx"), "--stages", "2", "-o", str(d / "p2")]) == 0
    return d


def test_partition_writes_a_pipeline_manifest(two_stages):
    data = json.loads((two_stages / "p2" / "pipeline.json").read_text())
    assert data["format"] == "edgecc-pipeline" and len(data["stages"]) == 2
    s0, s1 = data["stages"]
    assert s0["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32",
                             "source": -1}]
    assert s1["inputs"] == s0["outputs"] and s0["outputs"][0]["source"] == 0
    crossing = s1["inputs"][0]
    assert data["bytes_between_stages"] == int(np.prod(crossing["shape"])) * 4
    assert data["balance"] == pytest.approx(
        max(s0["cost"], s1["cost"]) / ((s0["cost"] + s1["cost"]) / 2), rel=1e-3)
    for s in (s0, s1):
        assert (two_stages / "p2" / s["artifact"] / "model.so").is_file()


def test_local_pipeline_matches_the_whole_model(two_stages, capsys):
    assert main(["pipeline", "run", str(two_stages / "p2"), "--devices", "local", "--count", "4",
                 "--verify", str(two_stages / "m.onnx")]) == 0
    assert "(ONNX Runtime, unpartitioned): max rel err" in capsys.readouterr().out


def test_pipeline_input_errors(two_stages, capsys):
    assert main(["pipeline", "run", str(two_stages / "p2"), "--devices", "127.0.0.1:1"]) == 1
    assert "error: bad --devices '127.0.0.1:1': expected HOST:PORT:KEY1,KEY2,..." in \
        capsys.readouterr().err
    assert main(["pipeline", "run", str(two_stages / "p2"), "--devices", "127.0.0.1:1:a"]) == 1
    assert ("error: the pipeline has 2 stages but --devices names 1 device key(s): give one per "
            "stage") in capsys.readouterr().err
    assert main(["pipeline", "run", str(two_stages), "--devices", "local"]) == 1
    assert "is not a pipeline directory (no pipeline.json" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"item 0: input 'x' is float32\[1, 3, 8, 8\]"):
        run_pipeline(two_stages / "p2", [{"x": np.zeros((1, 3, 8, 8), "float32")}],
                     devices=Devices.parse("local"))


# ----------------------------------------------------------------------------- on RPC devices

@pytest.fixture(scope="module")
def two_devices():
    with device_cluster({"edge-a": native_server("x86_64"),
                         "edge-b": native_server("x86_64")}) as cluster:
        yield cluster


def test_two_stages_on_two_rpc_devices_stream_and_match(two_stages, two_devices):
    items = _items(12)
    run = run_pipeline(two_stages / "p2", items,
                       devices=Devices.parse(f"{two_devices.tracker}:edge-a,edge-b"))
    model = onnx.load(two_stages / "m.onnx")
    for item, out in zip(items, run.outputs, strict=True):
        assert rel_err(out["y"], ort_run(model, item)[0]) <= 1e-4
    assert run.overlap_s(0, 1) > 0  # stage 0 worked on item n while stage 1 had item n-1
    assert len(run.intervals[0]) == len(run.intervals[1]) == 12


def test_device_dropping_mid_pipeline_fails_fast_naming_stage_and_device(two_stages):
    with device_cluster({"edge-c": native_server("x86_64"),
                         "edge-d": native_server("x86_64")}) as cluster:
        errors: list[BaseException] = []

        def run():
            try:
                run_pipeline(two_stages / "p2", _items(1) * 100000,
                             devices=Devices.parse(f"{cluster.tracker}:edge-c,edge-d"),
                             stage_timeout_s=10)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        time.sleep(3)  # running
        assert t.is_alive()
        killed = time.monotonic()
        cluster.stop_server("edge-d")
        t.join(timeout=30)
        assert not t.is_alive(), "the pipeline hung after a device died"
        assert time.monotonic() - killed < 30
    assert len(errors) == 1 and isinstance(errors[0], PipelineError)
    assert str(errors[0]).startswith(f"stage 1 on 'edge-d' at {cluster.tracker}"), errors[0]
