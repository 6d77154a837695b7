import json

from pathlib import Path

import pytest

from edgecc import TargetError
from edgecc.cli import main
from edgecc.targets import _load_all, get_target, list_targets


def test_named_targets_cover_x86_arm_boards_and_cuda():
    names = {t.name for t in list_targets()}
    assert {"x86_64", "aarch64", "rpi4", "jetson-orin-cpu", "cuda-sm87", "cuda-sm90",
            "cuda-sm75"} <= names
    boards = [t for t in list_targets() if t.arch == "aarch64" and t.kind == "llvm"]
    assert len({t.tvm_target.get("mcpu") for t in boards}) >= 3


@pytest.mark.parametrize("triple,name", [("x86_64-linux-gnu", "x86_64"),
                                         ("aarch64-linux-gnu", "aarch64"),
                                         ("aarch64", "aarch64")])
def test_raw_triples_map_to_defaults(triple, name):
    assert get_target(triple).name == name


def test_target_dict_is_a_tvm_json_target_with_host_for_cuda():
    t = get_target("cuda-sm87")
    d = t.target_json()
    assert d["kind"] == "cuda" and d["arch"] == "sm_87"
    assert d["host"]["mtriple"] == "aarch64-linux-gnu"
    assert t.device == "cuda" and t.arch == "aarch64"
    tvm_t = t.to_tvm()
    assert tvm_t.kind.name == "cuda" and tvm_t.host.kind.name == "llvm"


def test_unknown_target_lists_names():
    with pytest.raises(TargetError) as e:
        get_target("pdp11")
    assert str(e.value).startswith("unknown target 'pdp11'; known targets: aarch64, ")
    assert "x86_64" in str(e.value)


def test_malformed_target_file_is_reported(tmp_path, monkeypatch):
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad", "arch": "mips"}))
    monkeypatch.setenv("EDGECC_TARGETS_DIR", str(tmp_path))
    _load_all.cache_clear()
    with pytest.raises(TargetError, match=r"bad.json: missing field\(s\) description, tvm_target"):
        list_targets()
    _load_all.cache_clear()


def test_cli_targets_lists_every_target(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for t in list_targets():
        assert t.name in out and t.description in out


def test_native_picks_the_target_this_cpu_can_run():
    from edgecc.targets import native_target_name

    haswell = {"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe"}
    skylake = haswell | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
    assert native_target_name("x86_64", skylake) == "x86_64-avx512"
    assert native_target_name("x86_64", haswell | {"avx512f"}) == "x86_64"  # no BW/DQ/VL
    assert native_target_name("aarch64", set()) == "aarch64"
    with pytest.raises(TargetError, match="no native target for a riscv64 machine"):
        native_target_name("riscv64", set())
    # this machine, read from /proc/cpuinfo here, not through edgecc's own flag parsing
    import platform

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags
    expected = {"x86_64": "x86_64-avx512" if avx512 else "x86_64",
                "aarch64": "aarch64"}[platform.machine()]
    assert get_target("native").name == expected
