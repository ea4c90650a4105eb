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
# Two workers (pytest-xdist) on this 2-core machine: an emulated guest uses one core, so
# two boots run side by side. --dist loadgroup keeps what must stay together on one
# worker (tests/conftest.py: the OpenStack peer's tests; each end-to-end module; the
# release boots per release).
echo "== pytest" && .venv/bin/pytest -n 2 --dist loadgroup "$@"
# The agent's own tests that run it in a subprocess (GUEST_PYTHON), again under the Python
# of Debian 11 and 13: a minimal tree of each release (mmdebstrap from this machine's apt
# mirrors, cached in ~/.cache/netinject; netinject.vm.pytree) and its wrapper script.
# Modules whose tests import the agent in-process are left out (they ran on 3.11 above);
# test_guest_python checks that the wrapper runs the version claimed here.
GUEST_TESTS=(tests/test_guest_python.py tests/test_guest_hardening.py tests/test_guest_iso.py
  tests/test_guest_install.py tests/test_guest_agent.py tests/test_guest_metadata_sync.py
  tests/test_guest_stacks.py tests/test_guest_image_tree.py tests/test_guest_vendordata.py
  tests/test_guest_cloud_init.py tests/test_guest_glean.py
  tests/test_guest_contract.py::test_first_boot_imports_only_the_allowlist)
for release in bullseye:3.9 trixie:3.13; do
  echo "== the guest agent's tests under Debian ${release%%:*}'s Python ${release##*:}"
  python=$(.venv/bin/python -m netinject.vm.pytree "${release%%:*}")
  NETINJECT_GUEST_PYTHON=$python NETINJECT_GUEST_PYTHON_VERSION=${release##*:} \
    .venv/bin/pytest -q -n 2 -p no:cacheprovider "${GUEST_TESTS[@]}"
done
