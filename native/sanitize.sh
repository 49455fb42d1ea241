#!/usr/bin/env bash
# native/sanitize.sh [scale] - libvram_ops under the sanitizers, as CI runs it.
#
# Two separate builds of libvram_ops and of native/tests/stress.c (vram_stress):
#   1. ASan+UBSan (-fsanitize=address,undefined -fno-sanitize-recover=all):
#        vram_stress on the host backend and on the CUDA backend over tests/fakecuda (its
#        pool_churn, pinned_churn, d2d_migrate and async_streams run in both, staged_copies over
#        the fake only), then its async_streams, pinned_churn and staged_copies again over the
#        fake in its deferred mode (FAKECUDA_ASYNC=deferred: work on streams runs only when
#        something waits for it, so copies are still in flight when frees and waits race them);
#        vram_soak (native/tests/soak.c: 16 threads, a million mixed operations) on the host
#        backend;
#        the Rust FFI tests (tests/ffi) against the ASan library, with the ASan runtime
#        preloaded into the (uninstrumented) Rust test binaries and LeakSanitizer on, in the
#        three modes of tests/run.sh: host backend, CUDA without a driver, CUDA over the fake.
#   2. TSan (-fsanitize=thread): vram_stress with 32 threads on the host backend and over the
#        fake driver (and its deferred run, as above), and vram_soak (a quarter of its
#        operations), halting at the first report.
# Copies between the two devices of the stress and the soak go peer to peer in one build and
# through host memory (staged) in the other, on each backend (VRAMOBS_HOST_PEER, FAKECUDA_PEER);
# the deferred runs take the other path of their build.
# Exits non-zero on any sanitizer report or test failure; the last line is the summary.
#
# scale (default 1) multiplies the stress iterations; 1 takes about 2-3 minutes in all on
# two cores. Environment: CC (compiler, default cc; gcc or clang), PYTHON (the interpreter
# whose packages hold the nvidia-cuda-runtime wheel, for cuda.h), VRAMOBS_CUDA_INCLUDE_DIR
# (instead of the wheel), VRAMOBS_STRESS_THREADS (default 32), VRAMOBS_SANITIZE_DIR (build
# and log directory, default build/sanitize), VRAMOBS_TEST_SEED (replay a stress run),
# VRAMOBS_STRESS_TIMEOUT (seconds before vram_stress calls a test deadlocked, default
# 120 x scale), VRAMOBS_SANITIZE_STEP_TIMEOUT (seconds per step, default 300 x scale).
# Needs cmake, a C compiler with the sanitizer runtimes (gcc: libasan, libubsan, libtsan),
# and cargo; ninja is used when present.
set -euo pipefail

scale=${1:-1}
case $scale in
  '' | *[!0-9]* | 0) echo "usage: $0 [scale >= 1]" >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${VRAMOBS_SANITIZE_DIR:-$repo/build/sanitize}
cc=${CC:-cc}
threads=${VRAMOBS_STRESS_THREADS:-32}
step_timeout=${VRAMOBS_SANITIZE_STEP_TIMEOUT:-$((300 * scale))}
# vram_stress's watchdog: a test running this long is taken for a deadlock.
export VRAMOBS_STRESS_TIMEOUT=${VRAMOBS_STRESS_TIMEOUT:-$((120 * scale))}
supp=$repo/native/tests
mkdir -p "$work/logs"
work=$(cd "$work" && pwd)

say() { printf '\n=== sanitize.sh: %s\n' "$*"; }

# ---- toolchain ---------------------------------------------------------------------------
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# The interpreter whose packages hold the CUDA headers: tests/run.sh's .venv if there is one.
if [ -z "${PYTHON:-}" ] && [ -x "$repo/.venv/bin/python" ]; then export PYTHON=$repo/.venv/bin/python; fi
cmake_common=(-DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE= -DVRAMOBS_BUILD_SANITIZER_TESTS=ON
              -DVRAMOBS_BUILD_SOAK=ON)
[ -n "${PYTHON:-}" ] && cmake_common+=(-DPython_EXECUTABLE="$PYTHON")
[ -n "${VRAMOBS_CUDA_INCLUDE_DIR:-}" ] &&
  cmake_common+=(-DVRAMOBS_CUDA_INCLUDE_DIR="$VRAMOBS_CUDA_INCLUDE_DIR")

# clang links no sanitizer runtime into shared libraries, and libvram_ops links with
# -Wl,--no-undefined (gcc links its shared runtimes by default: nothing to do). ASan: clang's
# shared runtime (-shared-libsan, found through a run path), which the Rust test binaries
# preload too. TSan: clang's shared TSan runtime crashes at start-up (clang 14), so the static
# one in vram_stress serves the library, whose __tsan_* references stay undefined until load
# (-z undefs; CMAKE_C_STANDARD_LIBRARIES comes last on the link line, after --no-undefined).
is_clang=0
"$cc" --version 2>/dev/null | grep -qi clang && is_clang=1

# The ASan runtime to preload into uninstrumented programs (the Rust test binaries).
asan_runtime() {
  local f
  if [ $is_clang = 1 ]; then
    for f in "$("$cc" -print-file-name=libclang_rt.asan-x86_64.so)" \
             "$("$cc" -print-runtime-dir 2>/dev/null)/libclang_rt.asan.so"; do
      [ -f "$f" ] && { echo "$f"; return; }
    done
  else
    f=$("$cc" -print-file-name=libasan.so)
    [ -f "$f" ] && { readlink -f "$f"; return; }
  fi
  echo "sanitize.sh: cannot find the ASan runtime of $cc" >&2
  return 1
}

configure_build() { # dir sanitize-list extra-cflags
  local dir=$1 list=$2 cflags=$3 link= libs=
  if [ $is_clang = 1 ] && [ "$list" = thread ]; then
    libs=-Wl,-z,undefs
  elif [ $is_clang = 1 ]; then
    link="-shared-libsan -Wl,-rpath,$(dirname "$(asan_runtime)")"
  fi
  local name
  name=$(basename "$dir")
  cmake -S "$repo" -B "$dir" "${generator[@]}" "${cmake_common[@]}" \
    -DVRAMOBS_SANITIZE="$list" -DCMAKE_C_FLAGS="-O1 -g $cflags" \
    -DCMAKE_SHARED_LINKER_FLAGS="$link" -DCMAKE_EXE_LINKER_FLAGS="$link" \
    -DCMAKE_C_STANDARD_LIBRARIES="$libs" >"$work/logs/configure-$name.log" 2>&1 ||
    { cat "$work/logs/configure-$name.log"; return 1; }
  cmake --build "$dir" --target vram_ops vram_stress vram_soak >"$work/logs/build-$name.log" 2>&1 ||
    { cat "$work/logs/build-$name.log"; return 1; }
}

# ---- running and counting ----------------------------------------------------------------
failures=0
reports=0
declare -A passed=()
# vram_stress's tests of the pool, pinned memory, staging, two devices and streams, counted by
# name in the summary (staged_copies runs over the fake driver only).
new_tests=(pool_churn pinned_churn staged_copies d2d_migrate async_streams)
declare -A passed_test=()

# Sanitizer reports in a log: one SUMMARY line per report (ASan, LSan, UBSan, TSan), or at
# least one if a report's marker shows without its summary.
count_reports() {
  local n
  n=$(grep -cE 'SUMMARY: [A-Za-z]+Sanitizer' "$1" || true)
  if [ "$n" = 0 ] && grep -qE 'ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer|runtime error: ' "$1"; then
    n=1
  fi
  echo "$n"
}

# run NAME KIND CMD...: run a step, log it, count its tests and reports.
run() {
  local name=$1 kind=$2
  shift 2
  local log=$work/logs/$name.log status=0
  say "$name: $*"
  # A backstop for a hang the program's own watchdog misses (a Rust test, say).
  timeout -k 10 "$step_timeout" "$@" >"$log" 2>&1 || status=$?
  [ "$status" = 124 ] && echo "sanitize.sh: $name timed out after ${step_timeout}s" >>"$log"
  local r
  r=$(count_reports "$log")
  local n=0
  if [[ $kind == *soak ]]; then
    n=$(grep -c '^SOAK ok ' "$log" || true)
  elif [ "$kind" != rust ]; then
    n=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed$/\1/p' "$log" | tail -n 1)
  else
    n=$(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed.*/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
  fi
  n=${n:-0}
  passed[$kind]=$(( ${passed[$kind]:-0} + n ))
  if [ "$kind" = stress ] || [ "$kind" = tsan ]; then
    local t
    for t in "${new_tests[@]}"; do
      grep -q "^ok   $t " "$log" && passed_test[$kind:$t]=$(( ${passed_test[$kind:$t]:-0} + 1 ))
    done
  fi
  if [ "$status" != 0 ] || [ "$r" != 0 ]; then
    failures=$((failures + 1))
    reports=$((reports + r))
    # The whole log: the report or the failed test is what CI must show.
    cat "$log"
    echo "--- $name: FAILED (exit status $status, $r sanitizer report(s)); log: $log"
  else
    if [ "$kind" = rust ]; then
      grep -E '^test result:' "$log" | sed 's/^/  /'
    else
      grep -E '^(ok|FAIL) |passed, |^     |^SOAK ' "$log" | sed 's/^/  /'
    fi
    echo "--- $name: ok ($n passed, 0 reports)"
  fi
}

start=$(date +%s)

# ---- the fake driver (built normally: tests/fakecuda/build.sh takes no CFLAGS) -------------
say "building the fake driver"
CC=$cc bash "$repo/tests/fakecuda/build.sh" "$work/fakecuda" >"$work/logs/build-fakecuda.log" 2>&1 ||
  { cat "$work/logs/build-fakecuda.log"; exit 1; }
fake=$work/fakecuda/libfakecuda.so

# ---- 1. ASan + UBSan -----------------------------------------------------------------------
say "building libvram_ops and vram_stress with ASan+UBSan ($cc)"
configure_build "$work/asan" address,undefined -fno-sanitize-recover=all
asan_rt=$(asan_runtime)
# Leaks on; stop at the first report; allocator_may_return_null: a huge host-backend allocation
# fails as with glibc (NULL, answered 1) instead of ASan aborting the process.
common_asan=detect_leaks=1:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1:allocator_may_return_null=1
export ASAN_OPTIONS=$common_asan
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:print_summary=1
export LSAN_OPTIONS=
[ -f "$supp/lsan.supp" ] && export LSAN_OPTIONS=suppressions=$supp/lsan.supp:print_suppressions=0

stress_iterations=$((3000 * scale))
run asan-stress-host stress \
  env VRAMOBS_TEST_BACKEND=host "$work/asan/native/vram_stress" "$threads" "$stress_iterations"
run asan-stress-fakecuda stress \
  env VRAMOBS_TEST_BACKEND=cuda VRAMOBS_CUDA_DRIVER="$fake" FAKECUDA_PEER=0 \
  "$work/asan/native/vram_stress" "$threads" "$stress_iterations"
# The tests whose copies run on streams (async_streams; the staging engines' and pinned
# copies), with the fake's stream work deferred until something waits for it.
deferred_tests=async_streams,pinned_churn,staged_copies
run asan-stress-fakecuda-deferred stress \
  env VRAMOBS_TEST_BACKEND=cuda VRAMOBS_CUDA_DRIVER="$fake" FAKECUDA_ASYNC=deferred \
  VRAMOBS_STRESS_ONLY=$deferred_tests "$work/asan/native/vram_stress" "$threads" "$stress_iterations"
run asan-soak-host soak "$work/asan/native/vram_soak" 16 $((1000000 * scale))

# The Rust tests: cargo itself runs uninstrumented; only the test binaries get the ASan runtime
# preloaded, through a cargo runner. Their own target directory keeps tests/ffi/target (linked
# against whatever library the developer last used) untouched.
say "building the Rust FFI tests against the ASan library"
runner=$work/asan-runner.sh
cat >"$runner" <<EOF
#!/bin/sh
# cargo's runner for the Rust test binaries: preload the ASan runtime (it must come first).
LD_PRELOAD="$asan_rt\${LD_PRELOAD:+:\$LD_PRELOAD}" exec "\$@"
EOF
chmod +x "$runner"
host_triple=$(rustc -vV | sed -n 's/^host: //p')
runner_var=CARGO_TARGET_$(echo "$host_triple" | tr 'a-z-' 'A-Z_')_RUNNER
cargo_env=(env VRAMOBS_LIB_DIR="$work/asan/native" CARGO_TARGET_DIR="$work/cargo-asan"
           "$runner_var=$runner")
cargo_test=(cargo test --offline --no-fail-fast --manifest-path "$repo/tests/ffi/Cargo.toml")
"${cargo_env[@]}" "${cargo_test[@]}" --no-run >"$work/logs/build-rust.log" 2>&1 ||
  { cat "$work/logs/build-rust.log"; exit 1; }
run asan-rust-host rust "${cargo_env[@]}" VRAMOBS_BACKEND=host "${cargo_test[@]}"
run asan-rust-nodriver rust \
  "${cargo_env[@]}" VRAMOBS_CUDA_DRIVER=/nonexistent/libcuda.so.1 "${cargo_test[@]}"
run asan-rust-fakecuda rust "${cargo_env[@]}" VRAMOBS_CUDA_DRIVER="$fake" "${cargo_test[@]}"
unset ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS

# ---- 2. TSan -------------------------------------------------------------------------------
say "building libvram_ops and vram_stress with TSan ($cc)"
configure_build "$work/tsan" thread ""
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
[ -f "$supp/tsan.supp" ] && TSAN_OPTIONS=$TSAN_OPTIONS:suppressions=$supp/tsan.supp
tsan_iterations=$((2000 * scale))
run tsan-stress-host tsan \
  env VRAMOBS_TEST_BACKEND=host VRAMOBS_HOST_PEER=0 "$work/tsan/native/vram_stress" "$threads" \
  "$tsan_iterations"
run tsan-stress-fakecuda tsan \
  env VRAMOBS_TEST_BACKEND=cuda VRAMOBS_CUDA_DRIVER="$fake" \
  "$work/tsan/native/vram_stress" "$threads" "$tsan_iterations"
run tsan-stress-fakecuda-deferred tsan \
  env VRAMOBS_TEST_BACKEND=cuda VRAMOBS_CUDA_DRIVER="$fake" FAKECUDA_ASYNC=deferred FAKECUDA_PEER=0 \
  VRAMOBS_STRESS_ONLY=$deferred_tests "$work/tsan/native/vram_stress" "$threads" "$tsan_iterations"
run tsan-soak-host tsan-soak env VRAMOBS_HOST_PEER=0 "$work/tsan/native/vram_soak" 16 $((250000 * scale))
unset TSAN_OPTIONS

elapsed=$(( $(date +%s) - start ))
say "done in ${elapsed}s; logs in $work/logs"
# "(pool_churn 2, pinned_churn 3, staged_copies 2, d2d_migrate 2, async_streams 3)": runs of
# each that passed.
new_passed() {
  local t list=
  for t in "${new_tests[@]}"; do list+="${list:+, }$t ${passed_test[$1:$t]:-0}"; done
  echo "($list)"
}
summary="asan+ubsan stress ${passed[stress]:-0} passed $(new_passed stress), soak ${passed[soak]:-0} passed, rust ${passed[rust]:-0} passed; tsan stress ${passed[tsan]:-0} passed $(new_passed tsan), soak ${passed[tsan-soak]:-0} passed; $reports reports"
if [ $failures -ne 0 ]; then
  echo "SANITIZERS FAILED ($failures step(s)): $summary"
  exit 1
fi
echo "SANITIZERS: $summary"
