"""int8 with dot-product instructions: U8S8 and S8S8 QDQ models compute in int8, channels-last,
and the AVX512-VNNI build of an x86_64 artifact tensorizes its convolutions with vpdpbusd."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgecc
from edgecc.compress.evaluate import predict_onnx
from edgecc.compress.quantize import Quantization
from edgecc.runtime import load
from edgecc.targets import cpu_flags, get_target

VNNI_CPU = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= cpu_flags()


def _cnn(seed: int = 0, *, dead: bool = False) -> onnx.ModelProto:
    """x[1,3,16,16] -> Conv 3x3 (32, pad 1) -> Relu -> Conv 1x1 (24) -> Relu -> depthwise Conv
    3x3 (pad 1) + skip -> GlobalAveragePool -> Flatten -> Gemm (10): an RGB input (3 channels),
    output channels that are not a multiple of 16, a depthwise conv and a residual add."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype("float32"),
                                       name)

    inits = [init("W1", 32, 3, 3, 3), init("B1", 32), init("W2", 24, 32, 1, 1), init("B2", 24),
             init("W3", 24, 1, 3, 3), init("B3", 24), init("W4", 10, 24), init("B4", 10)]
    if dead:  # every first-layer ReLU output is 0: the next conv's input range is [0, 0]
        inits[1] = numpy_helper.from_array(np.full(32, -100.0, "float32"), "B1")
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "W3", "B3"], ["c3"], pads=[1, 1, 1, 1], group=24),
        helper.make_node("Add", ["c3", "r2"], ["s"]),
        helper.make_node("GlobalAveragePool", ["s"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "W4", "B4"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "int8cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _samples(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype("float32")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(fp32 model, ORT's own U8S8 QDQ model: asymmetric uint8 activations, per-channel int8
    weights, calibration .npz for edgecc's S8S8)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    d = tmp_path_factory.mktemp("int8")
    fp32 = d / "cnn.onnx"
    onnx.save(_cnn(), fp32)
    calib = _samples(32, 1)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter({"x": s[None]} for s in calib)

        def get_next(self):
            return next(self._it, None)

    u8s8 = d / "cnn.u8s8.onnx"
    quantize_static(str(fp32), str(u8s8), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    npz = d / "calib.npz"
    np.savez(npz, x=calib)
    return fp32, u8s8, npz


def _quantum_check(artifact, qdq, x):
    """edgecc's outputs are within one output quantum of ORT running the QDQ graph as written."""
    model = load(artifact)
    got = np.concatenate([model.run({"x": s[None]})["y"] for s in x])
    ref = predict_onnx(qdq, x, optimize=False)
    quantum = float(np.abs(ref).max()) / 127
    assert np.abs(got - ref).max() <= quantum + 1e-5, (np.abs(got - ref).max(), quantum)
    return model


@pytest.mark.parametrize("target", ["x86_64-avx512-vnni", "x86_64"])
def test_u8s8_model_computes_in_int8_channels_last(models, tmp_path, target):
    """ORT's U8S8 QDQ model (not calibrated by edgecc) compiles to int8 x int8 -> int32 convs
    and matmul, NHWC, with the zero point's padding made explicit; VNNI shifts nothing (the
    activations are unsigned already), the AVX2 build keeps uint8 activations too."""
    _, u8s8, _ = models
    ir: list[str] = []
    edgecc.compile(u8s8, output=tmp_path / "o", target=target, use_cache=False,
                   isa_variants=False, print_ir_after=("convert-layout",), emit_ir=ir.append)
    relax_ir = ir[0]
    convs = re.findall(r"R\.nn\.conv2d\(.*", relax_ir)
    assert len(convs) == 3
    assert all('out_dtype="int32"' in c and 'data_layout="NHWC"' in c for c in convs)
    assert 'R.matmul(' in relax_ir and 'out_dtype="int32"' in relax_ir.split("R.matmul(")[1]
    assert "R.quantize(" not in relax_ir and "R.dequantize(lv" not in relax_ir
    # the input's zero point (not 0) pads the first conv explicitly; for VNNI its 3 channels
    # are padded to 4 too (NCHW widths: N, C, H, W)
    pads = re.findall(r'R\.nn\.pad\(.*pad_width=\[([\d, ]+)\]', relax_ir)
    extra = "1" if target == "x86_64-avx512-vnni" else "0"
    assert pads and pads[0] == f"0, 0, 0, {extra}, 1, 1, 1, 1", pads
    # transposes only where the model's NCHW input and the flatten meet the NHWC region
    assert relax_ir.count("R.permute_dims(") <= 3
    if target != "x86_64-avx512-vnni" or VNNI_CPU:
        _quantum_check(tmp_path / "o", u8s8, _samples(8, 2))


def test_x86_64_int8_artifact_carries_a_vnni_build(models, tmp_path):
    """edgecc's own S8S8 calibration, compiled for x86_64: the artifact has a VNNI build whose
    conv kernels use vpdpbusd (the base build has none); the loader picks it on a VNNI CPU and
    its outputs stay within one quantum of ORT on the same QDQ model. A float model gets no
    VNNI build (int8_only)."""
    fp32, _, npz = models
    out = tmp_path / "int8"
    res = edgecc.compile(fp32, output=out, target="x86_64", use_cache=False,
                         quantize=Quantization("int8", calibration=npz))
    builds = [v.target for v in res.manifest.variants]
    assert builds == ["x86_64-avx512-vnni", "x86_64-avx512"]

    def count(lib):
        text = subprocess.run(["objdump", "-d", str(out / lib)], capture_output=True,
                              text=True, check=True).stdout
        return text.count("vpdpbusd")

    assert count("model.x86_64-avx512-vnni.so") >= 3 * 4  # three convs at least, unrolled
    assert count("model.so") == 0 and count("model.x86_64-avx512.so") == 0
    model = _quantum_check(out, out / "model.qdq.onnx", _samples(8, 3))
    if VNNI_CPU:
        assert model.build == "x86_64-avx512-vnni"
    f = edgecc.compile(fp32, output=tmp_path / "fp32", target="x86_64", use_cache=False)
    assert [v.target for v in f.manifest.variants] == ["x86_64-avx512"]


def test_a_dead_relu_layer_quantizes_without_dividing_by_zero(tmp_path):
    """All of a layer's activations are 0 (a dead ReLU): a zero calibration range is normal,
    the model compiles and matches ORT on the same QDQ model (for every build this CPU runs)."""
    model = tmp_path / "dead.onnx"
    onnx.save(_cnn(dead=True), model)
    np.savez(tmp_path / "calib.npz", x=_samples(16, 5))
    out = tmp_path / "o"
    edgecc.compile(model, output=out, target="x86_64", use_cache=False,
                   quantize=Quantization("int8", calibration=tmp_path / "calib.npz"))
    from edgecc.runtime.model import runnable_builds

    x = _samples(4, 6)
    ref = predict_onnx(out / "model.qdq.onnx", x, optimize=False)
    quantum = float(np.abs(ref).max()) / 127
    builds = runnable_builds(load(out).manifest)[0]
    assert builds
    for build in builds:
        m = load(out, build=build)
        got = np.concatenate([m.run({"x": s[None]})["y"] for s in x])
        assert np.isfinite(got).all() and np.abs(got - ref).max() <= quantum + 1e-5, build


def test_dot_product_by_target():
    from edgecc.schedules.intrinsics import SDOT, VNNI, dot_product

    assert dot_product(get_target("x86_64-avx512-vnni").to_tvm()) is VNNI
    assert dot_product(get_target("rpi5").to_tvm()) is SDOT
    assert dot_product(get_target("jetson-orin-cpu").to_tvm()) is SDOT
    for name in ("x86_64", "x86_64-avx512", "rpi4", "aarch64"):
        assert dot_product(get_target(name).to_tvm()) is None, name


def test_tensorized_conv_matches_numpy():
    """The int8 rule on a uint8 NHWC conv: tensorized with vpdpbusd; exact int32 sums (run
    where the CPU has VNNI)."""
    import tvm
    from tvm import relax

    from edgecc.schedules.rules import default_schedule

    n, h, w, c, o, k = 1, 8, 8, 32, 32, 3
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n, h, w, c), "uint8"))
    wt = relax.Var("w", relax.TensorType((o, k, k, c), "int8"))
    with bb.function("main", [x, wt]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.conv2d(x, wt, padding=1, data_layout="NHWC",
                                                  kernel_layout="OHWI", out_dtype="int32"))
        bb.emit_func_output(y)
    mod = relax.transform.LegalizeOps()(bb.get())
    func = next(f for g, f in mod.functions.items() if g.name_hint != "main")
    func = func.with_attr("global_symbol", "main").with_attr("layout_free_buffers", [1])
    target = get_target("x86_64-avx512-vnni").to_tvm()
    scheduled = default_schedule(func, target)
    assert scheduled is not None and "vpdpbusd" in str(scheduled)
    if not VNNI_CPU:
        return
    lib = tvm.tirx.build(tvm.IRModule({"main": scheduled}), target=target)
    rng = np.random.default_rng(0)
    xa = rng.integers(0, 256, (n, h, w, c)).astype("uint8")
    wa = rng.integers(-128, 128, (o, k, k, c)).astype("int8")
    xp = np.pad(xa.astype(np.int64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = sum(np.einsum("nhwc,oc->nhwo", xp[:, i:i + h, j:j + w], wa[:, i, j].astype(np.int64))
              for i in range(k) for j in range(k))
    dev = tvm.cpu()
    got = tvm.runtime.tensor(np.zeros((n, h, w, o), "int32"), dev)
    lib["main"](tvm.runtime.tensor(xa, dev), tvm.runtime.tensor(wa, dev), got)
    np.testing.assert_array_equal(got.numpy(), ref)


def test_decompose_qdq_leaves_no_qdq_ops():
    """Per-tensor quantize/dequantize become elementwise ops; a per-channel one stays."""
    from tvm import relax

    from edgecc.passes import decompose_qdq

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 2, 2), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            q = bb.emit(relax.op.quantize(x, relax.const(0.5, "float32"),
                                          relax.const(3, "uint8"), axis=1, out_dtype="uint8"))
            d = bb.emit(relax.op.dequantize(q, relax.const(0.5, "float32"),
                                            relax.const(3, "uint8"), axis=1))
            per_channel = bb.emit(relax.op.dequantize(
                q, relax.const(np.full(4, 0.25, "float32")), relax.const(np.zeros(4, "uint8")),
                axis=1))
            y = bb.emit_output(relax.op.add(d, per_channel))
        bb.emit_func_output(y)
    out = decompose_qdq.run(bb.get(), target=None).script()
    assert "R.quantize(" not in out and out.count("R.dequantize(") == 1
    assert "R.round(" in out and "R.clip(" in out


QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None or shutil.which("aarch64-linux-gnu-g++") is None
                    or shutil.which("aarch64-linux-gnu-objdump") is None,
                    reason="needs qemu-user and g++-aarch64-linux-gnu (scripts/setup.sh)")
@pytest.mark.parametrize("target,cpu,sdot", [("rpi5", "cortex-a76", True),
                                             ("rpi4", "cortex-a72", False)])
def test_aarch64_int8_uses_sdot_where_the_board_has_it(models, tmp_path, target, cpu, sdot):
    """The ARM proof for int8: the rpi5 build tensorizes its convs with sdot (ARMv8.2 dot
    product), the rpi4 build (Cortex-A72: none) has no sdot; each bundle runs under
    qemu-aarch64 emulating its board's CPU, within one output quantum of ORT on the same QDQ
    model (edgecc's S8S8 calibration)."""
    import tarfile

    from edgecc.cli import main

    fp32, _, npz = models
    art = tmp_path / "art"
    edgecc.compile(fp32, output=art, target=target, use_cache=False,
                   quantize=Quantization("int8", calibration=npz))
    disasm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(art / "model.so")],
                            capture_output=True, text=True, check=True).stdout
    with_sdot: dict[str, bool] = {}  # kernel -> has sdot (its wrapper and parallel body)
    for fn in re.split(r"\n(?=[0-9a-f]+ <)", disasm):
        name = re.match(r"[0-9a-f]+ <(?:__tvm_ffi_)?(\w*conv2d\w*?)(?:_compute_)?>:", fn)
        if name:
            with_sdot[name.group(1)] = with_sdot.get(name.group(1), False) or "\tsdot\t" in fn
    assert len(with_sdot) == 3, with_sdot
    # the two dense convs; the depthwise one has no 4-channel reduction
    assert sum(with_sdot.values()) == (2 if sdot else 0), with_sdot
    assert main(["package", str(art), "-o", str(tmp_path / "b.tar.gz")]) == 0
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        tar.extractall(tmp_path / "device", filter="data")
    bundle = next((tmp_path / "device").iterdir())
    x = _samples(4, 4)
    ref = predict_onnx(art / "model.qdq.onnx", x, optimize=False)
    quantum = float(np.abs(ref).max()) / 127
    for i in range(len(x)):
        np.save(tmp_path / "in.npy", x[i:i + 1])
        proc = subprocess.run([QEMU, "-cpu", cpu, "-L", AARCH64_SYSROOT,
                               str(bundle / "bin" / "edgecc-run"), str(bundle), "--input",
                               f"x={tmp_path / 'in.npy'}", "--output", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        got = np.load(tmp_path / "out" / "y.npy")
        assert np.abs(got - ref[i:i + 1]).max() <= quantum + 1e-5
