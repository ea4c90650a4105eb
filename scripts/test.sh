#!/usr/bin/env bash
# Sets up (idempotently) and runs every check CI runs: ruff, mypy --strict, pytest
# (unit, real ifupdown/qemu-ga/netns tests and the end-to-end QEMU boots).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# What the tests would build on first use (the OpenStack peer's chroot, the bookworm test
# images, Debian 11's and 13's Python trees) is built in the background, niced, while
# ruff, mypy and the first tests run on the other core: a test that needs something still
# being built waits for it (the cache's locks), then finds it built. Cached: a lookup.
prewarm_log=$(mktemp -t netinject-prewarm.XXXXXX)
setsid bash -c 'nice -n 10 bash scripts/openstack-peer.sh build >/dev/null
  exec nice -n 10 .venv/bin/python -m netinject.vm.prewarm --python-trees' \
  >"$prewarm_log" 2>&1 </dev/null &
prewarm=$!
trap 'kill -- -$prewarm 2>/dev/null || true; rm -f "$prewarm_log"' EXIT
echo "== ruff" && .venv/bin/ruff check .
echo "== mypy --strict" && .venv/bin/mypy
echo "== guest agent runs on Python >= 3.9" &&
  .venv/bin/vermin -q --no-tips -t=3.9- --eval-annotations --violations src/netinject/guest/
# One worker: two emulated guests side by side on this 2-core machine made boots of
# networkd and netplan images miss their deadlines (a fresh-machine run on two workers
# failed 4 boot tests). Of the Debian 11/13 release boots, two run here (netplan on 11,
# networkd on 13: prewarm.CI_RELEASE_VARIANTS); the others and the diskimage-builder
# build (marked `releases`, ~20 min more) are left out: `.venv/bin/pytest -m releases`.
echo "== pytest" && .venv/bin/pytest -m "not releases" --durations=25 "$@"
echo "== the background builds"
wait "$prewarm" || echo "(some failed: the tests that needed them built them again)"
cat "$prewarm_log"
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
