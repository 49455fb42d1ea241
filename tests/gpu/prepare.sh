#!/usr/bin/env bash
# On the CPU machine, before a GPU run: build what the GPU machine cannot (it has no network
# and no cargo). Leaves dist/vramobs-*.whl (the wheel, installed there unchanged),
# .carry/ffi/* (the Rust FFI test binaries), .carry/bench/vram_overhead (the C overhead
# benchmark) and .whl/ (OpenTelemetry's SDK, which the GPU machine lacks). All are
# git-ignored; carry dist, .carry and .whl.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
python3 -m venv build/prepare-venv
build/prepare-venv/bin/pip install -q --upgrade pip
rm -rf dist .carry
build/prepare-venv/bin/pip install -q "nvidia-cuda-runtime==13.*"  # headers for the C benchmark
build/prepare-venv/bin/pip wheel -q --no-deps . -w dist
mkdir -p build/wheel-lib .carry/ffi .carry/bench
python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('vramobs/libvram_ops.so', sys.argv[2])" \
  dist/vramobs-*.whl build/wheel-lib
export VRAMOBS_LIB_DIR="$repo/build/wheel-lib/vramobs"
cargo test --offline --manifest-path tests/ffi/Cargo.toml --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("profile", {}).get("test") and msg.get("executable"):
        shutil.copy(msg["executable"], sys.argv[1])
        print("rust test binary:", msg["executable"])
' .carry/ffi
strip .carry/ffi/*  # debug symbols would crowd the carry limit
cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DVRAMOBS_BUILD_BENCH=ON -DVRAMOBS_WERROR=ON \
  -DPython_EXECUTABLE="$repo/build/prepare-venv/bin/python"
cmake --build build/bench
cp build/bench/native/vram_overhead .carry/bench/
(cd .carry && apt-get download prometheus)  # a real Prometheus for the end-to-end test
build/prepare-venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 -d .whl \
  opentelemetry-api==1.38.0 opentelemetry-sdk==1.38.0 opentelemetry-semantic-conventions==0.59b0 \
  importlib-metadata==8.7.0 zipp==3.23.0
ls dist .carry/* .whl
