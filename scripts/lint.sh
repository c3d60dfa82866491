#!/usr/bin/env bash
# Formatter and linter check (CI runs it): ruff for Python, clang-format for C++/CUDA, both
# pinned in requirements-lint.txt and installed into .venv-lint. `scripts/lint.sh --fix` rewrites.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=.venv-lint
if [ ! -x "$venv/bin/ruff" ] || ! cmp -s requirements-lint.txt "$venv/.requirements"; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements-lint.txt
  cp requirements-lint.txt "$venv/.requirements"
fi
cpp_files=$(git ls-files 'csrc/*' 'tests/*' 'benchmarks/*' | grep -E '\.(cpp|h|cu|cuh)$')
if [ "${1:-}" = --fix ]; then
  "$venv/bin/ruff" check --fix .
  "$venv/bin/ruff" format .
  echo "$cpp_files" | xargs "$venv/bin/clang-format" -i
else
  "$venv/bin/ruff" check .
  "$venv/bin/ruff" format --check .
  echo "$cpp_files" | xargs "$venv/bin/clang-format" --dry-run -Werror
  echo "lint: ok"
fi
