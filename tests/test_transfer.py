"""Transfer tuning: kernels without a record of their own borrow a similar kernel's schedule."""

import math
import random

import numpy as np
import onnx
import pytest
from conftest import DIGITS_LOG, conv_then, make_conv_model, ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

import edgecc
from edgecc.cli import main
from edgecc.runtime import load, random_inputs
from edgecc.schedules import tuning_log
from edgecc.targets import DATA, get_target
from edgecc.schedules.transfer import (DEGENERATE_PENALTY, Donor, anchor_tile_refits, canonical_buffers,
                             ranked, refit_tile, shape_distance)



def test_refit_tile_keeps_the_product_and_the_inner_factors():
    assert refit_tile(64, [2, 4, 8]) == [2, 4, 8]  # same extent: the tuned tiles unchanged
    assert refit_tile(48, [2, 4, 8]) == [3, 2, 8]  # 8 still divides: kept; 4 does not: 2
    assert refit_tile(24, [1, 2, 16]) == [3, 1, 8]  # 16 lanes do not divide 24: 8, not 12
    assert refit_tile(28, [1, 1, 1, 32]) == [7, 1, 1, 4]  # never 28 lanes: a power of two
    assert refit_tile(28, [1, 32, 1, 1]) == [1, 28, 1, 1]  # outer levels: the largest divisor
    assert refit_tile(7, [1, 2, 16]) == [1, 1, 7]  # a prime: all of it innermost, within 16
    assert refit_tile(1, [4, 4]) == [1, 1]
    rng = random.Random(0)
    for _ in range(500):
        old = [rng.randint(1, 32) for _ in range(rng.randint(1, 5))]
        extent = rng.randint(1, 4096)
        new = refit_tile(extent, old)
        assert math.prod(new) == extent and len(new) == len(old)
        assert all(n <= o for n, o in zip(new[1:], old[1:], strict=True))  # no level grows


@pytest.mark.parametrize("extent, old", [(0, [1, 2]), (8, []), (8, [2, 0])])
def test_refit_tile_refuses_nonsense(extent, old):
    with pytest.raises(ValueError, match="cannot refit tile"):
        refit_tile(extent, old)


def test_shape_distance():
    assert shape_distance((1, 16, 8), (1, 16, 8)) == 0
    assert shape_distance((1, 16, 8), (1, 32, 2)) == pytest.approx(3.0)  # 1 + 2 octaves
    assert shape_distance((1, 16), (1, 16, 3)) == math.inf
    # a 1x1 window against a 3x3 one: 2 x log2(3) plus a penalty for each degenerate loop, so
    # a 3x3 conv prefers a 3x3 donor with other channel counts over a 1x1 one
    one_by_one = shape_distance((1, 16, 24, 24, 16, 3, 3), (1, 16, 48, 48, 16, 1, 1))
    assert one_by_one == pytest.approx(2 + 2 * math.log2(3) + 2 * DEGENERATE_PENALTY)
    assert shape_distance((1, 16, 24, 24, 16, 3, 3), (1, 32, 8, 8, 16, 3, 3)) < one_by_one


def test_buffer_names_do_not_decide_whether_kernels_match():
    """The graph names buffers (``x``, ``lv12``, ``matmul_intermediate`` when fused); the
    structure keeps only which buffer is read where."""
    def body(out, a, b):
        return (f"{out} = T.Buffer((1, 8), layout=None)\n{a} = T.Buffer((1, 4), layout=None)\n"
                f"{b} = T.Buffer((4, 8), layout=None)\n"
                f"{out}[i, j] = {out}[i, j] + {a}[i, k] * {b}[k, j]")

    fused = canonical_buffers(body("matmul_intermediate", "lv12", "param_0"))
    assert fused == canonical_buffers(body("matmul", "x", "w"))
    assert fused.endswith("buf_a[i, j] = buf_a[i, j] + buf_b[i, k] * buf_c[k, j]")
    swapped = body("o", "a", "b").replace("a[i, k] * b[k, j]", "b[i, k] * a[k, j]")
    assert canonical_buffers(swapped) != fused  # operands swapped: another computation


def test_ranked_prefers_near_shapes_and_this_targets_records():
    def donor(struct, ext, *, cross=False, run_s=1e-4):
        return Donor(struct, ext, trace=None, run_s=run_s, cross_target=cross)

    near, far = donor("conv", (1, 16, 8)), donor("conv", (1, 64, 64))
    other_op = donor("dwconv", (1, 16, 8))
    near_elsewhere = donor("conv", (1, 16, 8), cross=True)
    got = ranked("conv", (1, 16, 16), [far, other_op, near_elsewhere, near])
    assert got == [near, near_elsewhere, far]  # d=1, 1+penalty(2), d=5; other ops never
    fast, slow = donor("conv", (1, 16, 8), run_s=1e-5), donor("conv", (1, 16, 8), run_s=1e-3)
    assert ranked("conv", (1, 16, 8), [slow, fast]) == [fast, slow]  # ties: the faster first


def test_every_tile_on_the_anchor_loops_is_refitted_before_replay():
    """A donor's tiles are refitted to the kernel's own extents from the trace alone, before
    any replay: a replay that stops early (another epilogue) must not leave tiles sized for the
    donor's extents to the anchor-only application."""
    from tvm.s_tir import analysis
    import tvm

    from edgecc.schedules import tuning_log

    rec = next(r for r in tuning_log.read_records([DIGITS_LOG])
               if analysis.find_anchor_sblock(r.workload.mod) is not None
               and "conv2d" in analysis.find_anchor_sblock(r.workload.mod).name_hint)
    block = analysis.find_anchor_sblock(tvm.IRModule({"main": rec.workload.mod["main"]}))
    donor_extents = [int(iv.dom.extent) for iv in block.iter_vars]
    trace = rec.trace.simplified(remove_postproc=True)
    same = anchor_tile_refits(trace.insts, trace.decisions, block.name_hint, donor_extents)
    assert len(same) == len(donor_extents)  # one tile per anchor loop
    assert all([int(x) for x in trace.decisions[i]] == d for i, d in same)  # fits: unchanged
    other = [e * 3 if e > 1 else e for e in donor_extents]  # 3x every loop: 96 channels, ...
    refits = anchor_tile_refits(trace.insts, trace.decisions, block.name_hint, other)
    assert [math.prod(d) for _, d in refits] == other
    assert anchor_tile_refits(trace.insts, trace.decisions, "no_such_block", other) == []


@pytest.mark.parametrize("model", [make_conv_model(bn=False, cout=24), conv_then("Sigmoid")],
                         ids=["same-epilogue", "other-epilogue"])
def test_a_kernel_with_no_record_borrows_a_similar_one_and_stays_exact(tmp_path, model):
    """A 3x3 conv with 24 output channels (the digits log has 32 and 64) gets a digits conv's
    tuned schedule: parallel, vectorized, outputs equal to ONNX Runtime's."""
    ir = []
    r = edgecc.compile(model, output=tmp_path / "t", tuning_logs=[DIGITS_LOG],
                       use_shipped_logs=False, rule_schedule=False,
                       print_ir_after=["transfer-tuning"], emit_ir=ir.append)
    # the conv, plus the transposes into and out of channels-last (default schedules)
    assert r.kernels == (0, 3) and r.transferred == 1
    kernel = next(k for k in ir[0].split("@T.prim_func")[1:] if "def fused_conv2d" in k)
    assert "T.parallel" in kernel and "T.vectorized" in kernel
    assert 'edgecc.transferred"' in kernel  # the donor's extents are recorded on the kernel
    feed = random_inputs(r.manifest.inputs)
    assert rel_err(load(tmp_path / "t").run(feed)["y"], ort_run(model, feed)[0]) <= 1e-5
    # the donor packs weights; prepack-weights ran the packing at compile time and dropped it
    lib = (tmp_path / "t" / "model.so").read_bytes()
    assert b"_prepacked" in lib and b"_weight_prepack" not in lib

    untouched = edgecc.compile(model, output=tmp_path / "u", use_shipped_logs=False)
    assert untouched.kernels == (0, 3) and untouched.transferred == 0  # no logs, no donors


def test_prepacked_kernels_take_their_weights_directly(tmp_path):
    """After prepack-weights, main passes the packed constants straight to the kernels: no
    tuple of weights is built, indexed and killed at run time for each kernel."""
    ir = []
    edgecc.compile(make_conv_model(bn=False, cout=32), output=tmp_path / "t",
                   tuning_logs=[DIGITS_LOG], use_shipped_logs=False,
                   print_ir_after=["prepack-weights"], emit_ir=ir.append)
    main_fn = ir[0].split("def main(")[1]
    assert "_prepacked," in main_fn
    assert "R.Tuple" not in main_fn and "R.tuple(" not in main_fn


def test_transfer_is_reported_by_compile(tmp_path, capsys):
    onnx.save(make_conv_model(bn=False, cout=24), tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "c"),
                 "--tuning-log", str(DIGITS_LOG), "--no-shipped-logs", "--no-rule-schedule"]) == 0
    out = capsys.readouterr().out
    assert ("kernels: 0 tuned, 0 rule-tiled, 1 transferred from similar kernels, "
            "2 default schedule") in out
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "d"),
                 "--tuning-log", str(DIGITS_LOG), "--no-transfer-tuning",
                 "--no-rule-schedule"]) == 0
    out = capsys.readouterr().out
    assert ("kernels: 0 tuned, 0 rule-tiled, 0 transferred from similar kernels, "
            "3 default schedule") in out
    # by default the conv is tiled by the rule before any donor is considered
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "e"),
                 "--tuning-log", str(DIGITS_LOG)]) == 0
    out = capsys.readouterr().out
    assert ("kernels: 0 tuned, 1 rule-tiled, 0 transferred from similar kernels, "
            "2 default schedule") in out


def test_other_cpu_targets_logs_are_donors_for_a_target_without_logs(tmp_path):
    """No aarch64 log is shipped: the rpi4 build borrows the x86_64 schedules (traces are
    target-independent TIR), and its outputs keep the default compile's exactness."""
    assert not (DATA / "tuning_logs" / "rpi4").exists()
    model = make_conv_model(bn=False, cout=24)
    r = edgecc.compile(model, target="rpi4", output=tmp_path / "a", rule_schedule=False)
    assert r.transferred == 1 and r.manifest.arch == "aarch64"
    none = edgecc.compile(model, target="rpi4", output=tmp_path / "b", use_shipped_logs=False,
                          rule_schedule=False)
    assert none.transferred == 0
    ruled = edgecc.compile(model, target="rpi4", output=tmp_path / "c")  # the default
    assert ruled.rule_tiled == 1 and ruled.transferred == 0


def test_the_encoder_corpus_gives_donors_to_transformer_linears(tmp_path, monkeypatch):
    """A transformer linear (tokens x features @ weight + bias + residual) at widths no
    shipped model has borrows a schedule from the encoder corpus alone, and stays
    exact."""
    import shutil

    library = tmp_path / "library" / "x86_64"
    shutil.copytree(DATA / "tuning_logs" / "x86_64" / "encoder", library / "encoder")
    monkeypatch.setenv("EDGECC_TUNING_LOGS", str(tmp_path / "library"))
    rng = np.random.default_rng(2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["a"]),
         helper.make_node("Add", ["a", "x"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 20, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 20, 40])],
        [numpy_helper.from_array(rng.standard_normal((40, 40)).astype("float32"), "W"),
         numpy_helper.from_array(rng.standard_normal(40).astype("float32"), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    r = edgecc.compile(model, output=tmp_path / "a", rule_schedule=False)
    assert r.transferred == 1 and r.kernels == (0, 1)
    feed = random_inputs(r.manifest.inputs)
    assert rel_err(load(tmp_path / "a").run(feed)["y"], ort_run(model, feed)[0]) <= 1e-5
    monkeypatch.setenv("EDGECC_TUNING_LOGS", str(tmp_path / "empty"))
    assert edgecc.compile(model, output=tmp_path / "b", rule_schedule=False).transferred == 0


def test_a_log_library_replaces_the_shipped_logs(tmp_path, monkeypatch):
    """EDGECC_TUNING_LOGS points compile at another tree laid out like tuning_logs/."""
    import shutil

    library = tmp_path / "library"
    shutil.copytree(DIGITS_LOG, library / "x86_64" / "digits")
    monkeypatch.setenv("EDGECC_TUNING_LOGS", str(library))
    model = make_conv_model(bn=False, cout=24)
    r = edgecc.compile(model, output=tmp_path / "a", rule_schedule=False)
    assert r.transferred == 1
    assert r.manifest.options["tuning_logs"] == [str(library / "x86_64" / "digits")]
    monkeypatch.setenv("EDGECC_TUNING_LOGS", str(tmp_path / "empty"))
    assert edgecc.compile(model, output=tmp_path / "b", rule_schedule=False).transferred == 0


def test_a_log_being_written_reads_as_its_complete_records(tmp_path):
    """A compile may read a log while ``edgecc tune`` appends to it: a record whose workload
    line is not written yet, and a line cut mid-write, are left out instead of crashing
    MetaSchedule's JSONDatabase (it raised on the out-of-range workload index)."""
    import json
    import shutil

    from edgecc.schedules import tuning_log

    log = tmp_path / "log"
    shutil.copytree(DIGITS_LOG, log)
    n_records = len(tuning_log.read_records([log]))
    workloads = (log / "workloads.json").read_text().splitlines()
    first = json.loads((log / "records.json").read_text().splitlines()[0])
    with open(log / "records.json", "a") as f:
        f.write(json.dumps([len(workloads), first[1]]) + "\n")  # its workload comes later
    with pytest.raises(RuntimeError, match="workload_index"):
        tuning_log.open_database(log).get_all_tuning_records()  # what compiles used to do
    assert len(tuning_log.read_records([log])) == n_records
    with open(log / "records.json", "a") as f:
        f.write(json.dumps(first)[:-40])  # still being written
    assert len(tuning_log.read_records([log])) == n_records


def test_compaction_rewrites_only_the_records_file(tmp_path):
    import json
    import shutil

    from edgecc.schedules import tuning_log

    log = tmp_path / "log"
    shutil.copytree(DIGITS_LOG, log)
    workloads = (log / "workloads.json").read_bytes()
    lines = (log / "records.json").read_text().splitlines()
    slower = json.loads(lines[0])
    slower[1][1] = [float(s) * 3 for s in slower[1][1]]
    failed = json.loads(lines[0])
    failed[1][1] = []  # a failed measurement
    (log / "records.json").write_text("\n".join([*lines, json.dumps(slower),
                                                 json.dumps(failed)]) + "\n")
    assert tuning_log.compact(log, keep=1) == (len(lines) + 2, len(lines))
    assert (log / "workloads.json").read_bytes() == workloads  # indices stay valid
    assert (log / "records.json").read_text().splitlines() == lines
    assert tuning_log.compact(log, keep=5) == (len(lines), len(lines))


def test_in_model_choice_needs_a_clear_win_over_the_fastest_alone():
    from edgecc.tuning.selection import choose

    assert choose([10.0, 9.9, 12.0]) == 0  # 1% faster in the model: noise, keep rank 1
    assert choose([10.0, 9.0, 8.5]) == 2
    assert choose([10.0, 30.0]) == 0


def test_the_log_keeps_another_build_only_for_a_clear_end_to_end_win():
    from edgecc.tuning.selection import keep_build

    assert keep_build({"rank1": 1.0, "rank2": 0.995, "combined": 0.992}) == "rank1"
    assert keep_build({"rank1": 1.0, "rank2": 0.95, "combined": 0.97}) == "rank2"
    assert keep_build({"rank1": 0.9, "rank2": 1.0}) == "rank1"


def test_kernel_times_sum_a_workloads_calls_under_their_prepacked_names():
    from edgecc.tuning.selection import kernel_times

    names = {"fused_conv2d_add": "k1", "fused_conv2d_add1": "k1", "transpose": "k2"}
    profile = {"fused_conv2d_add_prepacked": 3.0, "fused_conv2d_add1": 2.0,
               "transpose": 1.0, "vm.builtin.alloc_tensor": 5.0}
    assert kernel_times(profile, names) == {"k1": 5.0, "k2": 1.0}


def test_a_holdout_log_leaves_out_the_models_own_records(tmp_path, digits_dir):
    """The leave-one-out figures' log library (benchmarks/bench_zoo.py): every record of the
    model's own kernels is gone, the rest stays; the FLOPs by schedule kind say so."""
    from edgecc.tuning.tune import kernel_workloads, tuning_module

    onnx_path = digits_dir / "digits.onnx"
    _, mod = tuning_module(onnx_path, get_target("x86_64"))
    own = set(kernel_workloads(mod).values())
    held = tmp_path / "digits-held-out"
    dropped = tuning_log.holdout_log(DIGITS_LOG, held, own)
    assert dropped > 0
    before = {tuning_log.workload_key(r.workload.mod) for r in tuning_log.read_records([DIGITS_LOG])}
    after = {tuning_log.workload_key(r.workload.mod) for r in tuning_log.read_records([held])}
    assert before & own and not after & own and after == before - own
    builds = {}
    for label, log in (("with", DIGITS_LOG), ("held-out", held)):
        r = edgecc.compile(onnx_path, output=tmp_path / label, tuning_logs=[log],
                           use_shipped_logs=False, rule_schedule=False, transfer_tuning=False)
        builds[label] = r.manifest.options["kernels"]
    assert builds["with"]["tuned"] > 0 and builds["held-out"]["tuned"] == 0
    flops = {k: v["flops"] for k, v in builds.items()}
    assert flops["with"]["tuned"] > 0 and flops["held-out"]["tuned"] == 0
    # the same kernels (a schedule adds a few index operations to the count)
    assert sum(flops["with"].values()) == pytest.approx(sum(flops["held-out"].values()), rel=0.01)
    assert flops["held-out"]["default"] > 1_000_000
