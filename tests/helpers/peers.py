"""The network stacks' own programs, run on rendered files (no mocks):

* ``netplan generate --root-dir`` (netplan.io 0.106),
* libnm's keyfile reader with a warning handler, then ``normalize`` and ``verify``
  (NetworkManager 1.42's own code, through python3-gi in Debian's python3: ``nmcli
  --offline`` silently repairs bad values, so it is not enough),
* systemd-networkd itself, run in a network namespace the test makes, on veth links
  that carry the NICs' MACs (read-only sysfs there tells networkd no udev runs),
* ``udevadm test-builtin net_setup_link`` for ``.link`` files, in the same kind of
  namespace.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

NETPLAN = "/usr/sbin/netplan"
NETWORKD = "/lib/systemd/systemd-networkd"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-gi and gir1.2-nm-1.0

NM_READ = r'''
import json, sys
import gi
gi.require_version("NM", "1.0")
from gi.repository import GLib, NM

out = {}
for path in sys.argv[1:]:
    warnings = []

    def handler(keyfile, connection, handler_type, handler_data, user_data):
        if handler_type == NM.KeyfileHandlerType.WARN:
            group, setting, prop, severity, message = handler_data.warn_get()
            warnings.append("%s.%s: %s" % (setting or group, prop or "", message))
        return False

    kf = GLib.KeyFile()
    kf.load_from_file(path, GLib.KeyFileFlags.NONE)
    conn = NM.keyfile_read(kf, "/etc/NetworkManager/system-connections",
                           NM.KeyfileHandlerFlags.NONE, handler, None)
    changed = conn.normalize()
    conn.verify()
    s4, s6 = conn.get_setting_ip4_config(), conn.get_setting_ip6_config()
    eth = conn.get_setting_wired()

    def ip(s):
        return {
            "method": s.get_method(),
            "addresses": ["%s/%d" % (a.get_address(), a.get_prefix())
                          for a in (s.get_address(i) for i in range(s.get_num_addresses()))],
            "gateway": s.get_gateway(),
            "routes": ["%s/%d,%s" % (r.get_dest(), r.get_prefix(), r.get_next_hop())
                       for r in (s.get_route(i) for i in range(s.get_num_routes()))],
            "dns": [s.get_dns(i) for i in range(s.get_num_dns())],
        }

    out[path] = {"warnings": warnings, "id": conn.get_id(), "uuid": conn.get_uuid(),
                 "type": conn.get_connection_type(), "mac": eth.get_mac_address(),
                 "mtu": eth.get_mtu(), "ipv4": ip(s4), "ipv6": ip(s6),
                 "addr_gen_mode": int(s6.get_addr_gen_mode())}
print(json.dumps(out))
'''


def netplan_generate(root: Path) -> subprocess.CompletedProcess[str]:
    """netplan's own parser and generator on ROOT/etc/netplan; output under ROOT/run."""
    return subprocess.run([NETPLAN, "generate", "--root-dir", str(root)],
                          capture_output=True, text=True, timeout=60, check=False)


def nm_read(paths: list[Path]) -> dict[str, Any]:
    """What libnm reads from each keyfile (KeyError-free dict), with its warnings; a
    CalledProcessError when libnm refuses one (keyfile_read or verify raised)."""
    done = subprocess.run([SYSTEM_PYTHON, "-c", NM_READ, *map(str, paths)],
                          capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextmanager
def netns_with_nics(nics: Mapping[str, str], carrier: bool = True) -> Iterator[str]:
    """A fresh network namespace with one veth per NIC (name -> MAC): the named end
    carries the MAC, its peer is up so the link has carrier (``carrier`` False: the
    peer stays down, and the NIC never has one). Removed on exit."""
    ns = f"ni-peer-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        for k, (name, mac) in enumerate(nics.items()):
            _ip("-n", ns, "link", "add", name, "address", mac, "type", "veth",
                "peer", "name", f"peer{k}")
            if carrier:
                _ip("-n", ns, "link", "set", f"peer{k}", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _in_ns(ns: str, config: Path, script: str, timeout: float
           ) -> subprocess.CompletedProcess[str]:
    """Run a shell script in the namespace with a private mount namespace where
    /etc/systemd/network is ``config``, /run/systemd is empty and /sys is read-only."""
    setup = (f"mount --bind {config} /etc/systemd/network && "
             "mount -t tmpfs tmpfs /run/systemd && mount -o remount,ro /sys && ")
    return subprocess.run(["ip", "netns", "exec", ns, "unshare", "--mount", "sh", "-c",
                           setup + script], capture_output=True, text=True,
                          timeout=timeout, check=False)


def networkd_apply(config: Path, nics: Mapping[str, str], expect_addresses: int,
                   timeout: float = 20.0, carrier: bool = True) -> dict[str, Any]:
    """Run the real systemd-networkd on ``config`` (a directory of .network/.link files
    and their drop-in directories) in a namespace with the given NICs (``carrier``: as
    netns_with_nics) until ``expect_addresses`` global addresses are up (or
    ``timeout``), then return what the kernel holds: addresses and routes of every NIC,
    and networkd's log."""
    config.chmod(0o755)  # networkd reads it as the systemd-network user
    with netns_with_nics(nics, carrier) as ns:
        script = (f"{NETWORKD} & pid=$!; "
                  f"for i in $(seq 1 {int(timeout * 10)}); do "
                  f"n=$(ip -j addr | grep -o '\"scope\":\"global\"' | wc -l); "
                  f"[ \"$n\" -ge {expect_addresses} ] && break; sleep 0.1; done; "
                  "sleep 0.5; kill $pid; wait $pid; "
                  "echo '---addr'; ip -j addr; echo '---route4'; ip -j -4 route; "
                  "echo '---route6'; ip -j -6 route")
        done = _in_ns(ns, config, script, timeout + 30)
    parts: dict[str, str] = {}
    key = "log"
    for line in done.stdout.splitlines():
        if line.startswith("---"):
            key = line[3:]
            parts[key] = ""
        else:
            parts[key] = parts.get(key, "") + line + "\n"
    addrs: dict[str, list[str]] = {}
    for link in json.loads(parts.get("addr", "[]") or "[]"):
        addrs[link["ifname"]] = sorted(
            f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
            if a.get("scope") == "global")
    routes = [*json.loads(parts.get("route4", "[]") or "[]"),
              *json.loads(parts.get("route6", "[]") or "[]")]
    return {"addresses": addrs, "routes": routes, "log": done.stderr,
            "links": {link["ifname"]: link for link in
                      json.loads(parts.get("addr", "[]") or "[]")}}


def link_name(config: Path, mac: str) -> dict[str, str]:
    """``udevadm test-builtin net_setup_link`` on a veth carrying ``mac`` (a name udev
    would not keep), with ``config`` as /etc/systemd/network: the properties it sets
    (ID_NET_LINK_FILE, ID_NET_NAME)."""
    with netns_with_nics({"vethtest0": mac}) as ns:
        done = _in_ns(ns, config, "udevadm test-builtin net_setup_link "
                                  "/sys/class/net/vethtest0", 60)
    props = {}
    for line in (done.stdout + done.stderr).splitlines():
        key, eq, value = line.partition("=")
        if eq and key.isupper():
            props[key] = value
    return props
