"""Rule tiling: convolutions and matrix products without a tuned record get MetaSchedule's
multi-level tiling sketch with decisions set by a rule, instead of naive loops."""

import math
import random
import re

import numpy as np
import onnx
import pytest
from conftest import ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

import edgecc
from edgecc.schedules.rule_tiling import (VECTOR_REGISTERS, anchor_block, default_tiles,
                                         is_contraction, operand_bytes, panel_major,
                                         producer_location, register_tile, tile_efficiency,
                                         vector_bits, vector_registers)
from edgecc.runtime import load, random_inputs
from edgecc.targets import get_target

NHWC_3X3 = [4, 4, 4, 4, 2, 2, 2]  # SSRSRS split counts: n, h, w, co | kh, kw, ci
SPATIAL, REDUCE = 0, 2


def test_tiles_make_a_register_tile_of_channel_vectors_by_rows():
    # 3x3 conv, 24x24, 96 <- 16 channels, AVX-512 (16 fp32 lanes)
    assert default_tiles([1, 24, 24, 96, 3, 3, 16], NHWC_3X3, lanes=16) == [
        [1, 1, 1, 1], [24, 1, 1, 1], [4, 1, 1, 6], [3, 1, 1, 32], [3, 1], [3, 1], [16, 1]]
    # 24 channels: the largest power of two that divides (8), not an odd-length vector
    assert default_tiles([1, 7, 7, 24, 3, 3, 8], NHWC_3X3, lanes=16)[3] == [3, 1, 1, 8]
    # a prime channel count is taken whole (one vector); a 7-wide row has no divisor up to 6
    # but 1, so with one vector all 7 rows are the tile (7 accumulators)
    tiles = default_tiles([1, 7, 7, 7, 1, 1, 3], NHWC_3X3, lanes=8)
    assert tiles[2] == [1, 1, 1, 7] and tiles[3] == [1, 1, 1, 7]


def test_register_tile_takes_rows_from_two_loops_when_one_splits_badly():
    # AVX2 (8 lanes). Extents that split well keep 6 (or 4) rows of one loop by 2 vectors
    assert register_tile(96, [24, 24], lanes=8) == (16, [6, 1])
    assert register_tile(64, [56, 56], lanes=8) == (16, [4, 1])
    # 14x14: 2 rows of each (8 accumulators), not the 2 rows of one (4)
    assert register_tile(256, [14, 14], lanes=8) == (16, [2, 2])
    # 7x7: 7 rows by 1 vector (7 accumulators), not 1 row by 2 vectors (2)
    assert register_tile(512, [7, 7], lanes=8) == (8, [7, 1])
    # a prime row count with no second loop (ViT's 197 tokens): 4 vectors by 1 row
    assert register_tile(576, [197], lanes=8) == (32, [1])
    # 13x13 and 1000 channels (one vector divides it): all 13 rows (13 accumulators)
    assert register_tile(1000, [13, 13], lanes=8) == (8, [13, 1])
    # never more registers than AVX2 has: accumulators + vectors + one broadcast
    for vec_extent, rows in ((512, [7, 7]), (96, [24, 24]), (320, [3, 3]), (64, [11, 13]),
                             (75, [20, 20]), (1000, [13, 13])):
        vec, factors = register_tile(vec_extent, rows, lanes=8)
        vectors = -(-vec // 8)  # a partial vector takes a register too
        assert math.prod(factors) * vectors + vectors + 1 <= VECTOR_REGISTERS


def test_panel_major_tiles_keep_one_weight_panel_across_consecutive_row_tiles():
    # ResNet-50's 3x3 conv on 7x7x512 (AVX-512): the row loops' outer factors move from the
    # parallel level to the second one, inside the output-channel tiles; the register tile
    # and the reduction stay as they were
    extents = [1, 7, 7, 512, 3, 3, 512]
    rows = default_tiles(extents, NHWC_3X3, lanes=16, registers=32)
    panels = default_tiles(extents, NHWC_3X3, lanes=16, registers=32, panel_major=True)
    assert rows[1] == [7, 1, 1, 1] and panels[1] == [1, 7, 1, 1]
    assert rows[3] == panels[3] and rows[4:] == panels[4:]
    assert [t[-1] for t in rows] == [t[-1] for t in panels]
    # a batched matmul's batch loop reads other weights per iteration: it stays outermost
    bmm = default_tiles([4, 64, 64, 32], [4, 4, 4, 2], lanes=16, panel_major=True,
                        shares_vector=[False, True, True, False])
    assert bmm[0] == [4, 1, 1, 1] and bmm[1][0] == 1


def test_avx512_register_tiles_use_all_32_registers():
    assert vector_registers(get_target("x86_64-avx512").to_tvm()) == 32
    assert vector_registers(get_target("x86_64").to_tvm()) == VECTOR_REGISTERS == 16
    # 14x14 by 2 vectors: a whole 14-pixel row (28 accumulators + 2 vectors + 1 broadcast = 31)
    assert register_tile(256, [14, 14], lanes=16, registers=32) == (32, [14, 1])


def test_tile_efficiency_model():
    assert tile_efficiency(6, 2) == tile_efficiency(4, 2) == 1.0  # 12 / 8 accumulators
    assert tile_efficiency(1, 2) == 0.25  # latency bound: 2 chains of 4-cycle multiply-adds
    assert tile_efficiency(7, 1) == 7 / 8  # bound by its 8 loads


def test_tiles_always_multiply_back_to_the_loop_extents():
    rng = random.Random(0)
    for _ in range(300):
        levels = [rng.choice([4, 2, 1]) for _ in range(rng.randint(1, 7))]
        extents = [rng.randint(1, 300) for _ in levels]
        tiles = default_tiles(extents, levels, lanes=rng.choice([4, 8, 16]))
        assert [len(t) for t in tiles] == levels
        assert [math.prod(t) for t in tiles] == extents


def test_padding_is_inlined_only_into_window_only_reductions():
    depthwise = ([1, 24, 24, 96, 3, 3], [SPATIAL] * 4 + [REDUCE] * 2)
    dense = ([1, 24, 24, 96, 3, 3, 16], [SPATIAL] * 4 + [REDUCE] * 3)
    assert producer_location(*depthwise) == -2  # inline
    assert producer_location(*dense) == -1  # once, before the conv


def test_vector_width_follows_the_target():
    assert vector_bits(get_target("x86_64-avx512").to_tvm()) == 512
    assert vector_bits(get_target("x86_64").to_tvm()) == 256
    assert vector_bits(get_target("rpi4").to_tvm()) == 128


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _kernels(model, target="x86_64"):
    from tvm import tirx

    from edgecc.tuning.tune import tuning_module

    _, mod = tuning_module(model, get_target(target))
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}


def _conv(hw, cin, cout):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype("float32"), "W")
    return _model([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, hw, hw])], [w])


def _conv_block(model):
    return anchor_block(next(f for f in _kernels(model).values() if is_contraction(f)))


def test_late_convs_run_panel_major_early_ones_row_major():
    late = _conv_block(_conv(7, 128, 128))
    weights, inputs = operand_bytes(late)
    assert weights == 128 * 128 * 9 * 4 and inputs == 9 * 9 * 128 * 4  # padded input
    assert panel_major(late)
    early = _conv_block(_conv(56, 16, 16))
    assert not panel_major(early)


def test_contractions_are_convs_and_matmuls_with_two_output_loops():
    rng = np.random.default_rng(0)
    f = TensorProto.FLOAT
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype("float32"), "W")
    model = _model(
        [helper.make_node("MatMul", ["v", "W"], ["gemv"]),  # [1, 64] @ [64, 32]
         helper.make_node("MatMul", ["m", "W"], ["gemm"]),  # [8, 64] @ [64, 32]
         helper.make_node("ReduceMean", ["m"], ["mean"], axes=[1], keepdims=0),
         helper.make_node("Softmax", ["m"], ["soft"], axis=1)],
        [helper.make_tensor_value_info("v", f, [1, 64]),
         helper.make_tensor_value_info("m", f, [8, 64])],
        [helper.make_tensor_value_info("gemv", f, [1, 32]),
         helper.make_tensor_value_info("gemm", f, [8, 32]),
         helper.make_tensor_value_info("mean", f, [8]),
         helper.make_tensor_value_info("soft", f, [8, 64])], [w])
    kinds = {name: is_contraction(func) for name, func in _kernels(model).items()}
    matmuls = sorted(v for k, v in kinds.items() if k.startswith("matmul"))
    assert matmuls == [False, True]  # the GEMV is dlight's; the 8x32 product is the rule's
    assert not any(v for k, v in kinds.items() if not k.startswith("matmul"))


def _uncovered_ops_model():
    """Ops that no shipped log has a kernel like: a transposed conv, a grouped conv, a 1-D conv."""
    rng = np.random.default_rng(1)
    f = TensorProto.FLOAT

    def w(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype("float32") * 0.2, name)

    return _model(
        [helper.make_node("ConvTranspose", ["x", "Wt"], ["up"], strides=[2, 2],
                          pads=[1, 1, 1, 1], kernel_shape=[4, 4]),
         helper.make_node("Conv", ["up", "Wg", "Bg"], ["g"], group=2, pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["g"], ["y"]),
         helper.make_node("Conv", ["s", "W1"], ["z"], pads=[2, 2])],
        [helper.make_tensor_value_info("x", f, [1, 8, 16, 16]),
         helper.make_tensor_value_info("s", f, [1, 16, 64])],
        [helper.make_tensor_value_info("y", f, [1, 16, 32, 32]),
         helper.make_tensor_value_info("z", f, [1, 32, 64])],
        [w("Wt", 8, 8, 4, 4), w("Wg", 16, 4, 3, 3), w("Bg", 16), w("W1", 32, 16, 5)])


@pytest.mark.parametrize("target", ["x86_64", "x86_64-avx512"])
def test_ops_no_log_covers_get_tiled_parallel_vector_loops_and_stay_exact(tmp_path, target):
    model = _uncovered_ops_model()
    ir = []
    r = edgecc.compile(model, target=target, output=tmp_path / "a", use_cache=False,
                       print_ir_after=["rule-schedule"], emit_ir=ir.append)
    assert r.rule_tiled == 3 and r.kernels[0] == 0  # nothing tuned, nothing naive
    lanes = 2 * vector_bits(get_target(target).to_tvm()) // 32
    convs = [k for k in ir[0].split("@T.prim_func")[1:] if re.search(r"def (fused_)?conv", k)]
    assert len(convs) == 3
    for kernel in convs:
        assert "T.parallel(" in kernel and "T.vectorized(" in kernel
        assert '"edgecc.rule_tiled": True' in kernel
    # the 1-D conv's 64-wide rows: a register tile of two full vectors
    conv1d = next(k for k in convs if "conv1d" in k.split("(", 2)[1])
    assert f"T.vectorized(T.int64({lanes}))" in conv1d
    from edgecc.targets import cpu_flags

    if set(get_target(target).cpu_features) <= cpu_flags():  # runs only where the CPU can
        feed = random_inputs(r.manifest.inputs)
        got = load(tmp_path / "a").run(feed)
        want = ort_run(model, feed)
        assert rel_err(got["y"], want[0]) <= 1e-4 and rel_err(got["z"], want[1]) <= 1e-4
    naive = edgecc.compile(model, target=target, output=tmp_path / "b", use_cache=False,
                           rule_schedule=False)
    assert naive.rule_tiled == 0


def test_squeeze_excite_gates_are_kept_from_dlights_gemv_rule(tmp_path):
    # GlobalAveragePool -> 1x1 conv -> sigmoid -> times the feature map: dlight's GEMV rule
    # would inline the sigmoid into the broadcast (one per element; LLVM took minutes on
    # EfficientNet's 7x7x1152 gate); softmax's reductions are not gates
    from edgecc.passes.cpu_schedule import gates_a_larger_tensor

    rng = np.random.default_rng(0)
    f = TensorProto.FLOAT
    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype("float32"), name)

    model = _model(
        [helper.make_node("Conv", ["x", "W0"], ["h"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["h"], ["p"]),
         helper.make_node("Conv", ["p", "W", "B"], ["g"]),
         helper.make_node("Sigmoid", ["g"], ["s"]),
         helper.make_node("Mul", ["h", "s"], ["y"]),
         helper.make_node("Conv", ["y", "W1"], ["o"]),
         helper.make_node("GlobalAveragePool", ["o"], ["q"]),
         helper.make_node("Flatten", ["q"], ["v"]),
         helper.make_node("Softmax", ["v"], ["z"], axis=1)],
        [helper.make_tensor_value_info("x", f, [1, 16, 7, 7])],
        [helper.make_tensor_value_info("z", f, [1, 32])],
        [init("W0", 32, 16, 3, 3), init("W", 32, 32, 1, 1), init("B", 32),
         init("W1", 32, 32, 1, 1)])
    kernels = _kernels(model)
    gates = sorted(name for name, func in kernels.items() if gates_a_larger_tensor(func))
    assert len(gates) == 1 and "conv2d" in gates[0], sorted(kernels)
    r = edgecc.compile(model, target="x86_64", output=tmp_path / "a", use_cache=False,
                       use_shipped_logs=False, isa_variants=False)
    feed = random_inputs(r.manifest.inputs)
    assert rel_err(load(tmp_path / "a").run(feed)["z"], ort_run(model, feed)[0]) <= 1e-5
