#!/usr/bin/env bash
# Installs everything netinject needs on a Debian/Ubuntu host, idempotently:
# Debian packages (ifupdown, mtools, QEMU, qemu-guest-agent, dnsmasq, ...) and a
# Python virtualenv in .venv with the package and its dev tools.
# Mirrors come from the machine's own apt and pip configuration.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  ifupdown iproute2 iputils-arping util-linux mount procps udev kmod
  mtools dosfstools genisoimage
  qemu-system-x86 qemu-utils qemu-guest-agent
  dnsmasq-base
  mmdebstrap e2fsprogs fuse2fs fuse3 fdisk curl lintian shellcheck
  debootstrap sudo
  cloud-init
  systemd insserv sysvinit-utils initscripts
  netplan.io libnm0 gir1.2-nm-1.0 python3-gi
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
need=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || need+=("$p")
done
if ((${#need[@]})); then
  echo "setup: installing Debian packages: ${need[*]}" >&2
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  # The host only needs cloud-init's Python code (its network_data.json parser is
  # used as a reference in tests); never let it configure this machine.
  $SUDO touch /etc/cloud/cloud-init.disabled 2>/dev/null || true
fi
# The libvirt tests run a private libvirtd of their own (netinject.vm.libvirtd: its own
# config, socket and state, in its own mount namespace), never the system's: nothing of
# libvirt's is configured or started on this machine. Its QEMU driver looks up the user
# and group it was built with (Debian's: libvirt-qemu) when it starts, before it reads
# the private qemu.conf that runs QEMU as root: libvirt-daemon-system's postinst creates
# them, but that package also configures and starts the system daemon, so just these.
if ! getent group libvirt-qemu >/dev/null; then
  $SUDO groupadd --system libvirt-qemu
fi
if ! getent passwd libvirt-qemu >/dev/null; then
  $SUDO useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt \
    --no-create-home --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: netinject needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.netinject-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/netinject)" >&2
