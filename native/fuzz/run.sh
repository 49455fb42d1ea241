#!/usr/bin/env bash
# native/fuzz/run.sh [seconds] - build the libFuzzer targets and run each for a bounded time.
#
# Builds native/fuzz/*.c with clang, libFuzzer, ASan and UBSan (-DVRAMOBS_BUILD_FUZZ=ON; the
# library's sources are compiled into each target), then runs every target for [seconds]
# (default 60) of -max_total_time on a temporary copy of its seed corpus
# (native/fuzz/corpus/<target>), with LeakSanitizer on, on the host backend with two emulated
# devices (fuzz_api_sequence copies between them peer to peer, fuzz_registry_threads through
# host memory, unless VRAMOBS_HOST_PEER says otherwise for both). The last lines
# say, per target, how many executions ran clean ("Done N runs" from libFuzzer). Exits
# non-zero when a target crashes, leaks, times out or fails a model check; the input that did
# it is kept as build/fuzz/run/artifacts/<target>/crash-* (or leak-*, timeout-*), its log as
# build/fuzz/run/<target>.log; replay with build/fuzz/native/<target> <artifact> (add
# VRAMOBS_FUZZ_TRACE=1 to print every call).
#
# Environment: CC (default clang), VRAMOBS_CUDA_INCLUDE_DIR (the directory holding cuda.h),
# else PYTHON (an interpreter whose packages hold the nvidia-cuda-runtime wheel; default
# tests/run.sh's .venv when present), VRAMOBS_FUZZ_DIR (the CMake build directory, default
# build/fuzz; logs and artifacts go to its run/), VRAMOBS_FUZZ_ARGS (more libFuzzer flags, e.g. "-jobs=4 -workers=4").
# Needs cmake and clang with libFuzzer and the sanitizer runtimes (Debian: clang,
# libclang-rt-14-dev).
set -euo pipefail

seconds=${1:-60}
case $seconds in
  '' | *[!0-9]* | 0) echo "usage: $0 [seconds per target >= 1]" >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${VRAMOBS_FUZZ_DIR:-$repo/build/fuzz}
mkdir -p "$build/run"
build=$(cd "$build" && pwd)
work=$build/run
targets=(fuzz_api_sequence fuzz_registry_threads)

# ---- build -------------------------------------------------------------------------------
if [ -z "${VRAMOBS_CUDA_INCLUDE_DIR:-}" ] && [ -z "${PYTHON:-}" ] && [ -x "$repo/.venv/bin/python" ]; then
  PYTHON=$repo/.venv/bin/python
fi
cmake_args=(-S "$repo" -B "$build" -DVRAMOBS_BUILD_FUZZ=ON -DCMAKE_C_COMPILER="${CC:-clang}"
            -DCMAKE_BUILD_TYPE=)
command -v ninja >/dev/null && [ ! -f "$build/CMakeCache.txt" ] && cmake_args+=(-G Ninja)
[ -n "${VRAMOBS_CUDA_INCLUDE_DIR:-}" ] && cmake_args+=(-DVRAMOBS_CUDA_INCLUDE_DIR="$VRAMOBS_CUDA_INCLUDE_DIR")
[ -n "${PYTHON:-}" ] && cmake_args+=(-DPython_EXECUTABLE="$PYTHON")
cmake "${cmake_args[@]}" >"$work/configure.log" 2>&1 || { cat "$work/configure.log" >&2; exit 1; }
cmake --build "$build" --target "${targets[@]}" -j "$(nproc 2>/dev/null || echo 2)" \
  >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }

# ---- run -----------------------------------------------------------------------------------
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export VRAMOBS_FUZZ_STATS=1
status=0
summary=()
for target in "${targets[@]}"; do
  corpus=$(mktemp -d "$work/corpus-$target.XXXXXX")
  cp "$repo/native/fuzz/corpus/$target/"* "$corpus/"
  artifacts=$work/artifacts/$target
  rm -rf "$artifacts"
  mkdir -p "$artifacts"
  log=$work/$target.log
  echo "=== $target: ${seconds}s on $(ls "$corpus" | wc -l) seeds (log: $log)"
  rc=0
  # shellcheck disable=SC2086
  timeout -k 30 $((seconds + 300)) "$build/native/$target" -max_total_time="$seconds" \
    -print_final_stats=1 -detect_leaks=1 -timeout=60 -rss_limit_mb=4096 \
    -artifact_prefix="$artifacts/" ${VRAMOBS_FUZZ_ARGS:-} "$corpus" >"$log" 2>&1 || rc=$?
  rm -rf "$corpus"
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 \2/p' "$log" | tail -1)
  found=$(ls -A "$artifacts")
  if [ "$rc" -eq 0 ] && [ -n "$runs" ] && [ -z "$found" ]; then
    read -r n s <<<"$runs"
    summary+=("$target: $n executions ran clean in ${s}s")
    grep '^vramobs fuzz' "$log" | tail -1 || true
  else
    status=1
    last=$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$log" | tail -1)
    summary+=("$target: FAILED (exit $rc) after ${last:-0} executions; artifacts: ${found:-none}; log: $log")
    grep -E -m1 -A3 'MODEL MISMATCH|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error' "$log" >&2 || tail -20 "$log" >&2
  fi
done
echo
printf '%s\n' "${summary[@]}"
exit "$status"
