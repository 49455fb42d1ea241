#!/usr/bin/env bash
# The test command (README, CI): build vramobs from this checkout into .venv, then run the
# CPU suite (pytest, host backend and driverless CUDA backend) and the Rust FFI tests.
# Needs python3, a C compiler, cargo; CMake and ninja come from PyPI if missing; Prometheus
# (prometheus, promtool), docker-compose (for `config`) and clang with libFuzzer come from
# Debian's packages.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null \
   || ! command -v docker-compose >/dev/null || ! command -v clang >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      prometheus docker-compose clang libclang-rt-14-dev >/dev/null
  else
    echo "tests/run.sh: install Debian's prometheus, docker-compose and clang packages first" >&2
  fi
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# Warnings are errors here, so CI keeps the shim warning-free.
.venv/bin/pip install -q --config-settings=cmake.define.VRAMOBS_WERROR=ON ".[test]"
# The Rust crate links the very library the wheel installed, and runs against the host
# backend, the CUDA backend without a driver, and the CUDA backend over the fake driver.
lib_dir=$(cd / && "$repo/.venv/bin/python" -c \
  "import os, vramobs._native as n; n.lib(); print(os.path.dirname(n.library_path()))")
export VRAMOBS_LIB_DIR="$lib_dir"
PYTHON="$repo/.venv/bin/python" bash tests/fakecuda/build.sh build/fakecuda
cargo=(cargo test --offline --manifest-path tests/ffi/Cargo.toml)
VRAMOBS_BACKEND=host "${cargo[@]}"
VRAMOBS_CUDA_DRIVER=/nonexistent/libcuda.so.1 "${cargo[@]}"
VRAMOBS_CUDA_DRIVER="$repo/build/fakecuda/libfakecuda.so" "${cargo[@]}"
# Again with the fake's streams deferred: async work runs only when something waits for it.
FAKECUDA_ASYNC=deferred VRAMOBS_CUDA_DRIVER="$repo/build/fakecuda/libfakecuda.so" "${cargo[@]}"

# The C stress test (32 threads), the soak and the Rust tests under ASan+UBSan, then TSan; the
# soak again as built; then each libFuzzer target for a minute against its shadow model.
PYTHON="$repo/.venv/bin/python" bash native/sanitize.sh
# The soak as built: 16 threads, a million mixed operations on the host backend, nothing leaked.
PYTHON="$repo/.venv/bin/python" bash native/soak.sh 16 1000000
PYTHON="$repo/.venv/bin/python" bash native/fuzz/run.sh 60

# The suites over the fake driver again with its streams deferred (staging, pinned copies,
# copies between devices, streams): async work runs only when something waits for it.
FAKECUDA_ASYNC=deferred .venv/bin/pytest -q tests/cpu/test_cuda_backend.py tests/cpu/test_staging.py \
  tests/cpu/test_pinned.py tests/cpu/test_device_copies.py tests/cpu/test_fault_matrix_table.py

# Last, so that its summary closes the run.
.venv/bin/pytest
