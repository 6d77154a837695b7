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

# torch is pinned to the CPU build (2.13.0); pip takes it from the local wheel cache / PyPI.
"$PY" -m pip install -q -e '.[dev]'
echo "setup: done ($("$PY" -c 'import tvm, onnxruntime, torch; print("tvm", tvm.__version__, "| onnxruntime", onnxruntime.__version__, "| torch", torch.__version__)'))"
