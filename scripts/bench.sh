#!/usr/bin/env bash
# The main job: the adder2d kernel benchmark on the best available device (CUDA if present,
# else CPU), after set-up (scripts/env.sh). Results go to benchmarks/out/ (git-ignored).
# usage: scripts/bench.sh [benchmark args...]     (see python -m benchmarks.bench_adder2d --help)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=$(scripts/env.sh "${ADDERNET_VENV:-.venv}" "${ADDERNET_REQUIREMENTS:-requirements.txt}")
exec "$python" -m benchmarks.bench_adder2d "$@"
