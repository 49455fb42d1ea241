#!/usr/bin/env bash
# The test command (README, CI): build vramobs from this checkout into .venv, then run the
# CPU suite (pytest, host backend and driverless CUDA backend) and the Rust FFI tests.
# Needs python3, a C compiler, cargo; CMake and ninja come from PyPI if missing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# Warnings are errors here, so CI keeps the shim warning-free.
.venv/bin/pip install -q --config-settings=cmake.define.VRAMOBS_WERROR=ON ".[test]"
.venv/bin/pytest

# The Rust crate links the very library the wheel installed.
lib_dir=$(cd / && "$repo/.venv/bin/python" -c \
  "import os, vramobs._native as n; n.lib(); print(os.path.dirname(n.library_path()))")
export VRAMOBS_LIB_DIR="$lib_dir"
VRAMOBS_BACKEND=host cargo test --offline --manifest-path tests/ffi/Cargo.toml
VRAMOBS_CUDA_DRIVER=/nonexistent/libcuda.so.1 cargo test --offline --manifest-path tests/ffi/Cargo.toml
