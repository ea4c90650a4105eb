#!/usr/bin/env bash
# Sets everything up (idempotently) and runs the main job on the built-in example:
# render the guest's network files, build the config drive, boot a Debian guest with
# the netinject agent under QEMU and show its time-to-network next to stock DHCP.
# The first run builds the guest images (a few minutes); later runs reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/netinject demo "$@"
