#!/usr/bin/env bash
# The whole GPU suite, on a machine with an NVIDIA GPU (run tests/gpu/prepare.sh first on the
# CPU machine and carry dist/, .carry/ and .whl/): installs the wheel built there unchanged,
# runs the pytest GPU suite, the end-to-end test with a real Prometheus, the Rust FFI test
# binaries on the CUDA backend, and the benchmarks, and ends with one summary line.
# Usage: tests/gpu/run.sh [OUT_DIR]
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-${OUT:-/tmp/vramobs-gpu}}
mkdir -p "$out"
site=$(mktemp -d)
wheel=$(ls "$repo"/dist/vramobs-*-py3-none-*.whl)
python3 -m pip install -q --no-index --no-deps --target "$site" "$wheel" "$repo"/.whl/*.whl \
  || exit 1
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" VRAMOBS_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
cd "$site"  # never import the source tree
# "N passed, N failed, N skipped" from a pytest junit file.
junit_summary() {
  python3 - "$1" "$2" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    s = ET.parse(sys.argv[2]).getroot()
    s = s if s.tag == "testsuite" else s.find("testsuite")
    t, f, e, k = (int(s.get(a, 0)) for a in ("tests", "failures", "errors", "skipped"))
    print(f"{sys.argv[1]} {t - f - e - k} passed, {f + e} failed, {k} skipped")
except Exception as exc:
    print(f"{sys.argv[1]} did not report ({exc})")
PY
}

python3 -c "import vramobs; print('vramobs', vramobs.__version__, 'from', vramobs.__file__)"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader

python3 -m pytest "$repo/tests/gpu" -q -rP -p no:cacheprovider \
  --junitxml "$out/pytest.xml" 2>&1 | tee "$out/pytest.log"
pytest_line=$(junit_summary pytest "$out/pytest.xml")

# The soak: threads of mixed operations near full VRAM, real and injected out-of-memory, for
# VRAMOBS_GPU_SOAK_SECONDS (default 60); then nothing live and the driver's free memory back.
python3 "$repo/tests/gpu/soak_gpu.py" --seconds "${VRAMOBS_GPU_SOAK_SECONDS:-60}" \
  --json "$out/soak.json" 2>&1 | tee "$out/soak.log"
soak_line=$(sed -n 's/^GPU SOAK: //p' "$out/soak.log" | tail -n 1)

# A real Prometheus scraping the demo on the GPU: every dashboard panel must show data.
dpkg -x "$(ls "$repo"/.carry/prometheus_*.deb)" "$site/prometheus-pkg"
PROMETHEUS="$site/prometheus-pkg/usr/bin/prometheus" VRAMOBS_E2E_BACKEND=cuda \
  python3 -m pytest "$repo/tests/cpu/test_prometheus_e2e.py" -q -p no:cacheprovider \
  --junitxml "$out/e2e.xml" 2>&1 | tee "$out/e2e.log"
e2e_line=$(junit_summary "prometheus e2e" "$out/e2e.xml")

rust_failed=0
for binary in "$repo"/.carry/ffi/*; do
  [ -x "$binary" ] || continue
  LD_LIBRARY_PATH="$site/vramobs" VRAMOBS_BACKEND=cuda "$binary" 2>&1 | tee -a "$out/rust.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rust_failed=$((rust_failed + 1))
done
read -r rust_passed rust_failed_tests < <(python3 - "$out/rust.log" <<'PY'
import re, sys
text = open(sys.argv[1]).read() if __import__("os").path.exists(sys.argv[1]) else ""
runs = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed", text)
print(sum(int(p) for p, _ in runs), sum(int(f) for _, f in runs))
PY
)

# compute-sanitizer memcheck over the C API on real VRAM (the Rust behaviour suite) and the
# Python operations suite: any report fails the line.
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
memcheck_line="memcheck not run (no compute-sanitizer)"
if [ -n "$sanitizer" ]; then
  # API errors are left out: the suites provoke out-of-memory on purpose.
  memcheck=("$sanitizer" --tool memcheck --leak-check full --report-api-errors no --error-exitcode 9)
  memcheck_failed=0
  LD_LIBRARY_PATH="$site/vramobs" VRAMOBS_BACKEND=cuda "${memcheck[@]}" \
    "$(ls "$repo"/.carry/ffi/behaviour-*)" --test-threads=1 > "$out/memcheck.log" 2>&1 \
    || memcheck_failed=$((memcheck_failed + 1))
  "${memcheck[@]}" python3 -m pytest "$repo/tests/gpu/test_ops_gpu.py" -q -p no:cacheprovider \
    -k "not no_growth and not racing" \
    >> "$out/memcheck.log" 2>&1 || memcheck_failed=$((memcheck_failed + 1))
  grep -E "ERROR SUMMARY|LEAK SUMMARY|passed|failed" "$out/memcheck.log"
  memcheck_line="memcheck $(grep -c 'ERROR SUMMARY: 0 errors' "$out/memcheck.log") of 2 runs clean, $memcheck_failed failed"
fi

python3 -m vramobs bench --staging-sweep 2>&1 | tee "$out/staging.md"
python3 -m vramobs bench --json "$out/bench.json" 2>&1 | tee "$out/bench.md"
bench_status=${PIPESTATUS[0]}
echo "C: observation's cost per call, vramobs against the bare driver call (same process)"
LD_LIBRARY_PATH="$site/vramobs" "$repo"/.carry/bench/vram_overhead 20000 2>&1 | tee -a "$out/bench.md"
[ "${PIPESTATUS[0]}" -eq 0 ] || bench_status=1

echo "GPU SUITE: $pytest_line; soak ${soak_line:-did not report}; $e2e_line; $memcheck_line; rust $rust_passed passed, $rust_failed_tests failed ($rust_failed binaries failed); bench $([ "$bench_status" -eq 0 ] && echo ok || echo FAILED)"
