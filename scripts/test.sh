#!/usr/bin/env bash
# Sets up (idempotently) and runs every check CI runs: ruff, mypy --strict, pytest
# (unit, real ifupdown/qemu-ga/netns tests and the end-to-end QEMU boots).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff" && .venv/bin/ruff check .
echo "== mypy --strict" && .venv/bin/mypy
echo "== guest agent runs on Python >= 3.9" &&
  .venv/bin/vermin -q --no-tips -t=3.9- --eval-annotations --violations src/netinject/guest/
echo "== pytest" && .venv/bin/pytest "$@"
