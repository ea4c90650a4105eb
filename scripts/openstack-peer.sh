#!/usr/bin/env bash
# A real, local OpenStack for netinject's tests and benchmarks: Keystone, Neutron (ML2,
# no agents) and Glance from Debian bookworm (OpenStack Zed) on SQLite, on loopback,
# plus nova's own Python code (python3-nova) to build config drives.
#
#   scripts/openstack-peer.sh start   build the chroot once (cached), start the services,
#                                     print the clouds.yaml path (clouds netinject-admin,
#                                     netinject and nova)
#   scripts/openstack-peer.sh stop    end exactly what start started
#   scripts/openstack-peer.sh status  running or not (exit 0 / 3)
#   scripts/openstack-peer.sh exec CMD...
#                                     run CMD in the chroot (the state directory is at
#                                     /srv/peer there), e.g. nova's code
#   scripts/openstack-peer.sh build   only build (or find) the cached chroot
#
# Everything runs as root in a chroot that shares this machine's network namespace; the
# services listen on 127.0.0.1 only. Each service runs in its own mount namespace, so
# /proc and the state directory are mounted for it alone and vanish with it: stop only
# has to end the processes. Mirrors come from this machine's apt sources.
#
# Environment: NETINJECT_CACHE (default ~/.cache/netinject), NETINJECT_PEER_DIR (state:
# databases, configs, logs, clouds.yaml; default /run/netinject-openstack-peer),
# NETINJECT_PEER_PORTS="keystone neutron glance" (default "15000 19696 19292").
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$(pwd)

SUITE=bookworm
RECIPE_VERSION=1
PACKAGES=(keystone neutron-server python3-neutron glance-api python3-nova
          python3-openstacksdk python3-keystonemiddleware genisoimage sqlite3)
CACHE=${NETINJECT_CACHE:-$HOME/.cache/netinject}
STATE=${NETINJECT_PEER_DIR:-/run/netinject-openstack-peer}
read -r KS_PORT NEUTRON_PORT GLANCE_PORT <<<"${NETINJECT_PEER_PORTS:-15000 19696 19292}"
SERVICES=(keystone neutron glance)

say() { echo "openstack-peer: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (chroot, mount namespaces)"

apt_sources() {
  local f
  [ -s /etc/apt/sources.list ] && grep -q '[^[:space:]]' /etc/apt/sources.list &&
    echo /etc/apt/sources.list
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && echo "$f"
  done
  return 0
}

recipe_key() {
  { echo "$SUITE $RECIPE_VERSION ${PACKAGES[*]}"; apt_sources | xargs -r cat; } |
    sha256sum | cut -c1-16
}

KEY=$(recipe_key)
TOP=$CACHE/openstack-peer-$KEY
ROOT=$TOP/root

build() {
  [ -f "$TOP/done" ] && return 0
  # One build at a time: scripts/test.sh builds the chroot in the background while the
  # first tests run, and a test that needs it meanwhile waits here, then finds it built.
  mkdir -p "$TOP"
  ( flock 9; build_locked ) 9>"$TOP/build.lock"
}

build_locked() {
  if [ -f "$TOP/done" ]; then
    return 0
  fi
  command -v mmdebstrap >/dev/null || die "mmdebstrap not found: run scripts/setup.sh"
  mapfile -t sources < <(apt_sources)
  ((${#sources[@]})) || die "no apt sources on this machine (mmdebstrap uses them as mirrors)"
  mkdir -p "$TOP"
  rm -rf "$TOP/root.partial"
  say "building the OpenStack chroot ($SUITE: ${PACKAGES[*]}); once, ~2 min, ~1.5 GB"
  local t0=$SECONDS
  if ! mmdebstrap --mode=root --variant=apt \
      --aptopt='APT::Install-Recommends "false"' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --include="$(IFS=,; echo "${PACKAGES[*]}")" \
      "$SUITE" "$TOP/root.partial" "${sources[@]}" >"$TOP/mmdebstrap.log" 2>&1; then
    tail -15 "$TOP/mmdebstrap.log" >&2
    die "mmdebstrap failed (log: $TOP/mmdebstrap.log)"
  fi
  rm -rf "$ROOT"
  mv "$TOP/root.partial" "$ROOT"
  mkdir -p "$ROOT/srv/peer"
  echo "$KEY" >"$TOP/done"
  say "chroot built in $((SECONDS - t0)) s: $ROOT"
  local stale
  for stale in "$CACHE"/openstack-peer-*; do
    [ "$stale" = "$TOP" ] || { say "removing the outdated chroot $stale"; rm -rf "$stale"; }
  done
}

# Run "$@" chrooted, in a private mount namespace with /proc and the state directory.
in_chroot() {
  unshare --mount --propagation private -- /bin/sh -c '
    root=$1 state=$2; shift 2
    mount -t proc proc "$root/proc" &&
    mount --bind "$state" "$root/srv/peer" &&
    exec chroot "$root" "$@"' sh "$ROOT" "$STATE" "$@"
}

alive() {  # alive NAME: its recorded process is running
  local pid
  [ -f "$STATE/$1.pid" ] && pid=$(cat "$STATE/$1.pid") && kill -0 "$pid" 2>/dev/null
}

running() {
  local s
  for s in "${SERVICES[@]}"; do alive "$s" || return 1; done
}

wait_http() {  # wait_http NAME URL: until URL answers (any HTTP status), or fail
  local i
  for i in $(seq 1 300); do
    if curl -s -o /dev/null --max-time 2 "$2"; then
      return 0
    fi
    alive "$1" || { tail -20 "$STATE/$1.log" >&2; die "$1 exited (log: $STATE/$1.log)"; }
    sleep 0.2
  done
  tail -20 "$STATE/$1.log" >&2
  die "$1 did not answer on $2 within 60 s (log: $STATE/$1.log)"
}

launch() {  # launch NAME CMD...: in the background, in its own session
  local name=$1; shift
  setsid bash -c "$(declare -f in_chroot); ROOT='$ROOT' STATE='$STATE' in_chroot \"\$@\"" \
    sh "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
}

write_configs() {
  local pw=$1 authtoken
  authtoken() {  # authtoken USER: a [keystone_authtoken] section
    cat <<EOF
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:$KS_PORT
auth_url = http://127.0.0.1:$KS_PORT
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = $1
password = $pw
interface = public
EOF
  }
  mkdir -p "$STATE"/{fernet-keys,credential-keys,neutron,lock,images}
  cat >"$STATE/keystone.conf" <<EOF
[DEFAULT]
log_file = /srv/peer/keystone-service.log
[database]
connection = sqlite:////srv/peer/keystone.db
[fernet_tokens]
key_repository = /srv/peer/fernet-keys
[credential]
key_repository = /srv/peer/credential-keys
[token]
expiration = 86400
EOF
  cat >"$STATE/neutron.conf" <<EOF
[DEFAULT]
core_plugin = ml2
service_plugins = router
auth_strategy = keystone
transport_url = fake:/
rpc_workers = 0
rpc_state_report_workers = 0
api_workers = 1
bind_host = 127.0.0.1
bind_port = $NEUTRON_PORT
state_path = /srv/peer/neutron
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
[database]
connection = sqlite:////srv/peer/neutron.db
[oslo_concurrency]
lock_path = /srv/peer/lock
[ml2]
type_drivers = flat,vlan,vxlan
tenant_network_types = vxlan
mechanism_drivers =
extension_drivers = port_security
[ml2_type_vxlan]
vni_ranges = 1:1000
$(authtoken neutron)
EOF
  cat >"$STATE/glance-api.conf" <<EOF
[DEFAULT]
bind_host = 127.0.0.1
bind_port = $GLANCE_PORT
workers = 0
enabled_backends = file:file
[database]
connection = sqlite:////srv/peer/glance.db
[glance_store]
default_backend = file
[file]
filesystem_store_datadir = /srv/peer/images
[os_glance_staging_store]
filesystem_store_datadir = /srv/peer/images/staging
[os_glance_tasks_store]
filesystem_store_datadir = /srv/peer/images/tasks
[paste_deploy]
flavor = keystone
config_file = /etc/glance/glance-api-paste.ini
[oslo_concurrency]
lock_path = /srv/peer/lock
$(authtoken glance)
EOF
}

start() {
  build
  if running; then
    say "already running"
    echo "$STATE/clouds.yaml"
    return 0
  fi
  stop_services quiet
  rm -rf "$STATE"
  mkdir -p "$STATE"
  chmod 0700 "$STATE"
  local pw t0=$SECONDS
  pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  write_configs "$pw"
  cp "$HERE/scripts/openstack_peer_provision.py" "$STATE/provision.py"

  say "keystone: database, keys, bootstrap"
  in_chroot keystone-manage --config-file /srv/peer/keystone.conf db_sync \
    >"$STATE/setup.log" 2>&1 || { tail "$STATE/setup.log" >&2; die "keystone db_sync failed"; }
  in_chroot keystone-manage --config-file /srv/peer/keystone.conf fernet_setup \
    --keystone-user root --keystone-group root >>"$STATE/setup.log" 2>&1
  in_chroot keystone-manage --config-file /srv/peer/keystone.conf credential_setup \
    --keystone-user root --keystone-group root >>"$STATE/setup.log" 2>&1
  in_chroot keystone-manage --config-file /srv/peer/keystone.conf bootstrap \
    --bootstrap-password "$pw" \
    --bootstrap-admin-url "http://127.0.0.1:$KS_PORT/v3" \
    --bootstrap-internal-url "http://127.0.0.1:$KS_PORT/v3" \
    --bootstrap-public-url "http://127.0.0.1:$KS_PORT/v3" \
    --bootstrap-region-id RegionOne >>"$STATE/setup.log" 2>&1 ||
    { tail "$STATE/setup.log" >&2; die "keystone bootstrap failed"; }

  say "neutron and glance: databases"
  # neutron-db-manage upgrade fails on SQLite (ALTER of constraints): create the head
  # schema from the models, then stamp it.
  in_chroot python3 -c '
import sqlalchemy
from neutron.db.migration.models import head
head.get_metadata().create_all(sqlalchemy.create_engine("sqlite:////srv/peer/neutron.db"))
' >>"$STATE/setup.log" 2>&1 || { tail "$STATE/setup.log" >&2; die "neutron schema failed"; }
  in_chroot neutron-db-manage --config-file /srv/peer/neutron.conf stamp heads \
    >>"$STATE/setup.log" 2>&1 || { tail "$STATE/setup.log" >&2; die "neutron stamp failed"; }
  in_chroot glance-manage --config-file /srv/peer/glance-api.conf db_sync \
    >>"$STATE/setup.log" 2>&1 || { tail "$STATE/setup.log" >&2; die "glance db_sync failed"; }

  # WAL: a reader's open transaction on one connection must not make another
  # connection's commit fail with "database is locked" (keystone holds several).
  local db
  for db in keystone neutron glance; do
    in_chroot sqlite3 "/srv/peer/$db.db" "PRAGMA journal_mode=WAL;" >/dev/null
  done
  say "starting keystone, neutron, glance on 127.0.0.1"
  launch keystone env OS_KEYSTONE_CONFIG_FILES=/srv/peer/keystone.conf \
    keystone-wsgi-public --host 127.0.0.1 --port "$KS_PORT"
  wait_http keystone "http://127.0.0.1:$KS_PORT/v3"
  in_chroot python3 /srv/peer/provision.py "http://127.0.0.1:$KS_PORT/v3" "$pw" \
    "$NEUTRON_PORT" "$GLANCE_PORT" >>"$STATE/setup.log" 2>&1 ||
    { tail "$STATE/setup.log" >&2; die "provisioning keystone failed"; }
  launch neutron neutron-server --config-file /srv/peer/neutron.conf
  launch glance glance-api --config-file /srv/peer/glance-api.conf
  wait_http neutron "http://127.0.0.1:$NEUTRON_PORT/"
  wait_http glance "http://127.0.0.1:$GLANCE_PORT/"
  echo "$ROOT" >"$STATE/root"
  say "up in $((SECONDS - t0)) s; clouds: netinject-admin, netinject, nova"
  echo "$STATE/clouds.yaml"
}

stop_services() {
  # Each service runs in its own session (setsid); some of their processes make their
  # own process group (glance-api does), so the whole session is ended.
  local s pid i
  for s in "${SERVICES[@]}"; do
    [ -f "$STATE/$s.pid" ] || continue
    pid=$(cat "$STATE/$s.pid")
    if pgrep -s "$pid" >/dev/null 2>&1; then
      pkill -TERM -s "$pid" 2>/dev/null || true
      for i in $(seq 1 50); do pgrep -s "$pid" >/dev/null 2>&1 || break; sleep 0.1; done
      pkill -KILL -s "$pid" 2>/dev/null || true
      sleep 0.1
      ! pgrep -s "$pid" >/dev/null 2>&1 || say "some processes of $s outlived SIGKILL"
      [ "${1:-}" = quiet ] || say "stopped $s"
    fi
    rm -f "$STATE/$s.pid"
  done
}

case "${1:-}" in
  build) build; echo "$ROOT" ;;
  start) start ;;
  stop) stop_services ;;
  status)
    if running; then echo "running: $STATE/clouds.yaml"; else echo "not running"; exit 3; fi ;;
  exec)
    shift
    [ -f "$TOP/done" ] || die "no chroot yet: run start"
    mkdir -p "$STATE"
    in_chroot "$@" ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
