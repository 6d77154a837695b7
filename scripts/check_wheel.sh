#!/usr/bin/env bash
# Build edgecc's wheel, install it (not editable) into a fresh venv and run the README's main job
# from there: targets, compile with the shipped logs, verify, package with the native loader.
# Proves that the package data (targets, tuning logs, native loader sources) ships in the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/edgecc-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$PY" -m pip wheel -q --no-deps -w "$work/dist" .
wheel=$(ls "$work"/dist/edgecc-*.whl)
echo "wheel: $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"
"$PY" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q -c constraints.txt "$wheel"
echo "venv: $(du -sm "$work/venv" | cut -f1) MiB; nvidia packages: $("$work/venv/bin/python" -m pip list 2>/dev/null | grep -ci nvidia || true)"

cd "$work"  # nothing from the checkout on the path
export EDGECC_USER_TUNING_LOGS="$work/no-user-logs"  # the shipped logs only, whatever this user tuned
bin="$work/venv/bin"
"$bin/edgecc" targets >/dev/null
"$PY" "$OLDPWD/examples/make_models.py" -o models mobilenetv2 >/dev/null
"$bin/edgecc" compile models/mobilenetv2.onnx --target x86_64 -o out/mobilenetv2 -q --no-cache
"$bin/python" - <<'PY'
import json
m = json.load(open("out/mobilenetv2/model.json"))
logs = m["options"]["tuning_logs"]
assert logs and all("site-packages/edgecc/tuning_logs" in p for p in logs), logs
print(f"compiled with {len(logs)} shipped logs from the installed package")
PY
"$bin/edgecc" verify out/mobilenetv2 models/mobilenetv2.onnx
"$bin/edgecc" package out/mobilenetv2 -o mobilenetv2.tar.gz
tar -tzf mobilenetv2.tar.gz > bundle.txt  # (grep -q on a pipe would SIGPIPE tar)
grep -q 'bin/edgecc-run$' bundle.txt
grep -q 'lib/libedgecc_runtime.so$' bundle.txt  # the C API, and a program built against it
grep -q 'bin/run_model$' bundle.txt
echo "wheel check: ok"
