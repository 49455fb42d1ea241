#!/usr/bin/env bash
# On the CPU machine, before a GPU run: build what the GPU machine cannot (it has no network
# and no cargo). Leaves dist/vramobs-*.whl (the wheel, installed there unchanged) and
# .carry/ffi/* (the Rust FFI test binaries). Both paths are git-ignored; carry them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
python3 -m venv build/prepare-venv
build/prepare-venv/bin/pip install -q --upgrade pip
rm -rf dist .carry/ffi
build/prepare-venv/bin/pip wheel -q --no-deps . -w dist
mkdir -p build/wheel-lib .carry/ffi
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
ls dist .carry/ffi
