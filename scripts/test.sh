#!/usr/bin/env bash
# Lint, type-check (for Linux, and for Windows outside platform/linux) and run every
# test. Integration tests need root: they build network namespaces and remove them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

ruff check src tests benchmarks examples setup.py
ruff format --check src tests benchmarks examples setup.py
mypy
mypy --platform win32 src/netwarden --exclude 'src/netwarden/platform/linux/' \
  --exclude 'src/netwarden/testing/'
python -m pytest -p no:cacheprovider "$@"
