#!/usr/bin/env bash
# Builds the op library with CMake against libtorch (the CPU wheel's, in .venv-cpu) and runs
# the C++ test with ctest. usage: scripts/cmake_test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=$(ADDERNET_NO_BUILD=1 scripts/env.sh .venv-cpu requirements-cpu.txt)
prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B cmake-build -DCMAKE_PREFIX_PATH="$prefix" >cmake-build.log 2>&1 || { cat cmake-build.log; exit 1; }
cmake --build cmake-build -j "${MAX_JOBS:-$(nproc)}" >>cmake-build.log 2>&1 || { tail -50 cmake-build.log; exit 1; }
ctest --test-dir cmake-build --output-on-failure
