import numpy as np
import pytest
from conftest import make_conv_model, ort_run, rel_err

from edgecc.cli import main


def test_help_everywhere(capsys):
    for cmd in ([], ["compile"], ["run"], ["verify"], ["targets"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
        assert "usage: edgecc" in capsys.readouterr().out


def test_compile_run_verify(tmp_path, conv_onnx, capsys):
    out = tmp_path / "art"
    assert main(["compile", str(conv_onnx), "--target", "x86_64-linux-gnu", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "compiled conv for x86_64 (x86_64, cpu) in" in captured.out
    for name in ("import", "passes", "build", "export"):
        assert f"[edgecc] {name}" in captured.err
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--input", f"x={tmp_path / 'x.npy'}", "-o",
                 str(tmp_path / "res"), "--bench", "3"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 output(s)" in printed and "latency: mean" in printed and "p90" in printed
    got = np.load(tmp_path / "res" / "y.npy")
    assert rel_err(got, ort_run(conv_onnx, {"x": x})[0]) <= 1e-4
    assert main(["verify", str(out), str(conv_onnx)]) == 0
    assert "OK (tolerance: rel <= 0.0001)" in capsys.readouterr().out
    # the AVX2 build by name, here and refused for an RPC device (which runs model.so)
    assert main(["run", str(out), "--build", "x86_64"]) == 0
    assert capsys.readouterr().out.startswith("running the x86_64 build\n")
    for cmd in ("run", "bench"):
        assert main([cmd, str(out), "--build", "x86_64", "--rpc-tracker", "127.0.0.1:9",
                     "--rpc-key", "k"]) == 1
        assert capsys.readouterr().err == (
            "error: --build chooses among the builds run on this machine; an RPC device runs "
            "the artifact's model.so\n")
    # second compile of the same model: served by the cache
    assert main(["compile", str(conv_onnx), "-o", str(tmp_path / "again")]) == 0
    assert "from cache" in capsys.readouterr().out


def test_verify_fails_on_a_different_model(tmp_path, capsys):
    import onnx

    onnx.save(make_conv_model(seed=0), tmp_path / "a.onnx")
    onnx.save(make_conv_model(seed=1), tmp_path / "b.onnx")
    assert main(["compile", str(tmp_path / "a.onnx"), "-o", str(tmp_path / "art"), "-q"]) == 0
    assert main(["verify", str(tmp_path / "art"), str(tmp_path / "b.onnx")]) == 1
    err = capsys.readouterr().err
    assert "error: outputs differ from ONNX Runtime beyond rel 0.0001" in err


@pytest.mark.parametrize("args,message", [
    (["compile", "{tmp}/missing.onnx", "-o", "{tmp}/o"], "error: model file '{tmp}/missing.onnx' not found"),
    (["compile", "{conv}", "-t", "vax", "-o", "{tmp}/o"], "error: unknown target 'vax'; known targets:"),
    (["compile", "{conv}", "-o", "{tmp}"], "error: output '{tmp}' already exists (use --force to replace it)"),
    (["compile", "{conv}", "-o", "{tmp}/o", "--print-ir-after", "nosuch"], "error: unknown pass name(s) nosuch"),
    (["compile", "{conv}"], "error: compile needs a MODEL and -o OUT_DIR"),
    (["run", "{tmp}/none"], "error: artifact directory '{tmp}/none' does not exist"),
    (["verify", "{tmp}/none", "{conv}"], "error: artifact directory '{tmp}/none' does not exist"),
])
def test_errors_are_one_line_without_traceback(tmp_path, conv_onnx, capsys, args, message):
    fill = {"tmp": str(tmp_path), "conv": str(conv_onnx)}
    assert main([a.format(**fill) for a in args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message.format(**fill))
    assert "Traceback" not in err


def test_run_input_errors(tmp_path, conv_onnx, capsys):
    out = tmp_path / "art"
    assert main(["compile", str(conv_onnx), "-o", str(out), "-q"]) == 0
    np.save(tmp_path / "bad.npy", np.zeros((2, 2), "float32"))
    (tmp_path / "junk.npy").write_text("junk")
    cases = [
        ([f"x={tmp_path / 'bad.npy'}"], "error: input 'x' has shape (2, 2), expected (1, 3, 16, 16)"),
        ([f"x={tmp_path / 'junk.npy'}"], f"error: input file '{tmp_path / 'junk.npy'}' is not a valid .npy/.npz file"),
        ([f"x={tmp_path / 'nope.npy'}"], f"error: input file '{tmp_path / 'nope.npy'}' not found"),
        ([f"y={tmp_path / 'bad.npy'}"], "error: missing input(s) x; unknown input(s) y"),
    ]
    for inputs, message in cases:
        capsys.readouterr()
        assert main(["run", str(out), *sum((["--input", i] for i in inputs), [])]) == 1
        assert capsys.readouterr().err.startswith(message)


def test_bad_input_shape_syntax_is_a_usage_error(conv_onnx, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compile", str(conv_onnx), "-o", "x", "--input-shape", "x=1,a"])
    assert e.value.code == 2
    assert "bad --input-shape 'x=1,a'" in capsys.readouterr().err


def test_list_passes_and_print_ir(tmp_path, conv_onnx, capsys):
    assert main(["compile", "--list-passes"]) == 0
    listing = capsys.readouterr().out
    assert ("cpu-default: qdq-to-int8 -> decompose-qdq -> canonicalize -> fold-constant -> "
            "fold-batchnorm") in listing
    assert "  fuse " in listing
    assert main(["compile", str(conv_onnx), "-o", str(tmp_path / "o"), "-q",
                 "--print-ir-after", "fuse"]) == 0
    out = capsys.readouterr().out
    assert out.count("# ---- IR after") == 1 and "# ---- IR after fuse ----" in out
    assert "R.call_tir" in out
