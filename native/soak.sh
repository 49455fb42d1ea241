#!/usr/bin/env bash
# native/soak.sh [threads [operations]] - build native/tests/soak.c (vram_soak) with warnings as
# errors and run it: a bounded load-and-soak run of libvram_ops on the host backend (default 16
# threads, 1,000,000 operations: allocations, copies, d2d copies, migrations, batches, pinned
# memory, pool trims), ending with nothing leaked, the pool trimmed and every device's free
# memory back at its baseline. The last line is the soak's summary ("SOAK ok ..."); exits
# non-zero on any failed check. native/sanitize.sh runs the same soak under ASan+UBSan and TSan.
#
# Environment: PYTHON (an interpreter whose packages hold the nvidia-cuda-runtime wheel, for
# cuda.h; default tests/run.sh's .venv) or VRAMOBS_CUDA_INCLUDE_DIR, VRAMOBS_SOAK_DIR (build
# directory, default build/soak), VRAMOBS_SOAK_TIMEOUT (seconds before the soak calls itself
# hung, default 300 here), VRAMOBS_TEST_SEED (replay), VRAMOBS_HOST_CAPACITY and
# VRAMOBS_HOST_DEVICES (default 1 MiB and 2: out-of-memory is frequent), VRAMOBS_HOST_PEER
# (1, default: copies between devices peer to peer; 0: through host memory).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${VRAMOBS_SOAK_DIR:-$repo/build/soak}
if [ -z "${VRAMOBS_CUDA_INCLUDE_DIR:-}" ] && [ -z "${PYTHON:-}" ] && [ -x "$repo/.venv/bin/python" ]; then
  PYTHON=$repo/.venv/bin/python
fi
args=(-S "$repo" -B "$build" -DVRAMOBS_BUILD_SOAK=ON -DVRAMOBS_WERROR=ON -DCMAKE_BUILD_TYPE=Release)
case ${PYTHON:-} in '' | /*) ;; *) PYTHON=$PWD/$PYTHON ;; esac  # CMake wants it absolute
[ -n "${PYTHON:-}" ] && args+=(-DPython_EXECUTABLE="$PYTHON")
[ -n "${VRAMOBS_CUDA_INCLUDE_DIR:-}" ] && args+=(-DVRAMOBS_CUDA_INCLUDE_DIR="$VRAMOBS_CUDA_INCLUDE_DIR")
mkdir -p "$build"
cmake "${args[@]}" >"$build/configure.log" 2>&1 || { cat "$build/configure.log" >&2; exit 1; }
cmake --build "$build" --target vram_soak -j "$(nproc 2>/dev/null || echo 2)" >"$build/build.log" 2>&1 ||
  { cat "$build/build.log" >&2; exit 1; }
VRAMOBS_SOAK_TIMEOUT=${VRAMOBS_SOAK_TIMEOUT:-300} "$build/native/vram_soak" "${1:-16}" "${2:-1000000}"
