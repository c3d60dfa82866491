#!/usr/bin/env bash
# The test suite on a fresh or existing machine: set-up (scripts/env.sh), then pytest.
# usage: scripts/test.sh [pytest args...]
# ADDERNET_EXPECT_CUDA=1 makes the tests fail unless the CUDA kernels were compiled in.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=$(scripts/env.sh "${ADDERNET_VENV:-.venv}" "${ADDERNET_REQUIREMENTS:-requirements.txt}")
exec "$python" -m pytest "$@"
