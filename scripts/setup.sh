#!/usr/bin/env bash
# One-command setup on a fresh Debian/Ubuntu machine: the Debian packages the aarch64 target
# needs (cross g++, qemu-user to run aarch64 binaries) and the pinned Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEB_PACKAGES=(g++ g++-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-user)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "setup: warning: no apt-get; install ${missing[*]} yourself (aarch64 targets need them)" >&2
  fi
fi

# The plain xgboost wheel (with CUDA's NCCL) and xgboost-cpu install the same module: replace
# the first by the second (pyproject.toml depends on xgboost-cpu where it has wheels).
if "$PY" -m pip show -q xgboost >/dev/null 2>&1; then
  echo "setup: replacing xgboost (CUDA build, pulls nvidia-nccl-cu12) by xgboost-cpu"
  "$PY" -m pip uninstall -q -y xgboost nvidia-nccl-cu12
fi
# torch is pinned to the CPU build (2.13.0); pip takes it from the local wheel cache / PyPI.
# constraints.txt pins what the dependencies pull in unpinned (ml_dtypes: cold start).
"$PY" -m pip install -q -c constraints.txt -e '.[dev]'
echo "setup: done ($("$PY" -c 'import tvm, onnxruntime, torch; print("tvm", tvm.__version__, "| onnxruntime", onnxruntime.__version__, "| torch", torch.__version__)'))"
