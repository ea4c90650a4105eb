#!/usr/bin/env bash
# Sets up (idempotently) and runs every check CI runs: ruff, mypy --strict, pytest
# (unit, real ifupdown/qemu-ga/netns tests and the end-to-end QEMU boots).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff" && .venv/bin/ruff check .
echo "== mypy --strict" && .venv/bin/mypy
echo "== pytest" && .venv/bin/pytest "$@"
