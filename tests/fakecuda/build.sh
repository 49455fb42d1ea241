#!/bin/sh
# Build libfakecuda.so, the fake NVIDIA driver library, into the directory $1.
# cuda.h comes from $VRAMOBS_CUDA_INCLUDE_DIR, else from the installed nvidia-cuda-runtime
# wheel (nvidia/cu13/include), found with the same python3 lookup as native/CMakeLists.txt.
# Set PYTHON to pick the interpreter whose packages hold the wheel, CC the compiler.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 <output dir>" >&2
    exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)

include=${VRAMOBS_CUDA_INCLUDE_DIR:-}
if [ -z "$include" ]; then
    include=$("${PYTHON:-python3}" -c "import importlib.util, os; s = importlib.util.find_spec('nvidia'); print(next(os.path.join(p, 'cu13', 'include') for p in s.submodule_search_locations if os.path.exists(os.path.join(p, 'cu13', 'include', 'cuda.h'))))" 2>/dev/null) || include=
fi
if [ -z "$include" ] || [ ! -f "$include/cuda.h" ]; then
    echo "$0: cuda.h not found (looked in '${include}'). Install the nvidia-cuda-runtime wheel" \
         "(pip install 'nvidia-cuda-runtime==13.*') or set VRAMOBS_CUDA_INCLUDE_DIR." >&2
    exit 1
fi

mkdir -p "$out"
${CC:-cc} -shared -fPIC -O2 -Wall -Wextra -Werror -I"$include" "$here/fakecuda.c" \
    -o "$out/libfakecuda.so" -lpthread
echo "$out/libfakecuda.so"
