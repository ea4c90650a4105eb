"""Day 2 through stock nova's metadata API, as a test bed (issue 23): an instance made in
the local OpenStack peer as nova has it, a NIC attached and detached as nova's
attach_interface and detach_interface do, a drift made in Neutron, and what the guest
itself says of its network (through its qemu-guest-agent).

Shared by the end-to-end test (tests/test_e2e_metadata.py) and ``netinject bench
metadata-hotplug`` (bench/metadata_hotplug.py), so both measure the same path. Checks
raise BedError (never ``assert``: the benchmark records the failure and goes on).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NetinjectError
from ..guest import contract
from ..hotplug import QmpAttacher, with_port
from ..model import Nic
from ..qga import GuestAgent
from ..sources.neutron import parse_document
from ..vm import testbed as vm
from ..vm.harness import Guest, first_reply, start_prober
from .metadata_proxy import Binding, forward, metadata_proxy
from .peer import Peer, Tenant

SECRET = "netinject-e2e-shared-secret"  # between the signing proxy and nova
METADATA_IP = "169.254.169.254"
VD2 = "/openstack/latest/vendor_data2.json"
HOSTNAME = "netinject-vm"
NOVA_CACHE_EXPIRATION = 15  # nova's default [api] metadata_cache_expiration (s)
HOTPLUG_CIDR = "203.0.113.0/24"  # the hot-plugged NIC's subnet (vm.HOTPLUG_IP's)
ARP_WAIT_S = 150.0  # device_add -> the NIC's first ARP answer, at most
# Where each stack keeps eth1's config besides the udev rule.
ETH1_FILES: dict[str, tuple[str, ...]] = {
    "ifupdown": (),  # (its stanza in /etc/network/interfaces)
    "networkd": ("/etc/systemd/network/10-netinject-eth1.network",
                 "/etc/systemd/network/10-netinject-eth1.link"),
    # (its entry in /etc/netplan/90-netinject.yaml; networkd's drop-in, and its directory)
    "netplan": ("/etc/systemd/network/10-netplan-eth1.network.d/90-netinject.conf",
                "/etc/systemd/network/10-netplan-eth1.network.d"),
    "nm": ("/etc/NetworkManager/system-connections/netinject-eth1.nmconnection",),
}
SHARED_FILE = {"ifupdown": "/etc/network/interfaces", "netplan": "/etc/netplan/90-netinject.yaml"}
RULES = "/etc/udev/rules.d/70-persistent-net.rules"
SYNC_CONF = "/etc/netinject/sync.conf"
SYNC_TIMER = "netinject-sync.timer"
# Drift: what an operator changes in Neutron (change_in_neutron).
NEW_ROUTE, NEW_DNS = vm.NEW_ROUTE, vm.NEW_DNS
NEW_IP = "192.0.2.20"


class BedError(NetinjectError):
    """A check of the test bed failed (what, and what was seen instead)."""


@dataclass
class Cloud:
    """The instance as the peer has it: Neutron's objects, nova's record, its drive."""

    iid: str
    net: Any
    sub: Any
    port: Any
    conf: Path  # its nova metadata API's config directory
    drive: Path


def make_instance(peer: Peer, t: Tenant, target: str, stack: str, tmp: Path,
                  dhcp: bool = True, cache_expiration: int = NOVA_CACHE_EXPIRATION,
                  prefix: str = "e2emeta") -> Cloud:
    """The test bed's instance (vm.document()'s network, subnet and port: MAC, address,
    gateway, DNS, host route, MTU) made in the peer's Neutron with a fresh uuid, its
    config drive built by nova's own code (calling the vendordata service at
    ``target``), and its record in nova's database with the info cache built by nova
    from Neutron; its nova metadata API's config with ``[api]
    metadata_cache_expiration`` = ``cache_expiration``. ``dhcp``: the subnet's
    enable_dhcp (False: nova's network_data.json says static). ``prefix``: of the names
    it makes."""
    iid = str(uuid.uuid4())
    net = t.network(f"{prefix}-{stack}-{iid[:6]}", mtu=vm.MTU)
    sub = t.subnet(net, ip_version=4, cidr=f"192.0.2.0/{vm.PREFIX}", gateway_ip=vm.HOST_IP,
                   enable_dhcp=dhcp,
                   dns_nameservers=[vm.HOST_IP],
                   host_routes=[{"destination": vm.HOST_ROUTE, "nexthop": vm.HOST_IP}])
    port = t.port(net, iid, vm.GUEST_MAC, [{"subnet_id": sub.id, "ip_address": vm.GUEST_IP}])
    image = t.image(inject=True)
    out = peer.state / f"{prefix}-{iid}.iso"
    [built] = peer.build_drives(peer.nova_conf(f"{prefix}-{stack}", target), [{
        "instance": iid, "project": t.project_id, "image": image.id,
        "hostname": HOSTNAME, "ports": [port.id], "out": str(out)}])
    if built["error"]:
        raise BedError(f"nova's drive build: {built!r}")
    drive = tmp / "drive.iso"
    shutil.move(out, drive)
    conf = peer.nova_metadata_conf(f"{prefix}-{stack}-{iid[:8]}", target, SECRET,
                                   cache_expiration=cache_expiration)
    vifs = peer.nova_instance(conf, iid, t.project_id, str(t.demo.current_user_id),
                              image.id, HOSTNAME, [port.id])
    if vifs != [port.id]:
        raise BedError(f"nova's info cache has VIFs {vifs!r}, not [{port.id!r}]")
    return Cloud(iid, net, sub, port, conf, drive)


def hotplug_nic() -> Nic:
    """The test bed's second NIC (eth1, vm.HOTPLUG_MAC and _IP), as QMP plugs it."""
    port, subnet, network = vm.hotplug_port()
    inst = parse_document(with_port(vm.document(), port, [subnet], [network])).instance
    return next(n for n in inst.nics if n.port_id == vm.HOTPLUG_PORT_ID)


def attach_as_nova(peer: Peer, t: Tenant, cloud: Cloud, guest: Guest, nic: Nic, tag: str,
                   dhcp: bool = True) -> tuple[Any, float | None]:
    """Attach as stock nova does: the port (vm.HOTPLUG_MAC and _IP, on a new network and
    subnet whose enable_dhcp is ``dhcp``) in Neutron, bound to the instance; nova's
    attach_interface puts it in the info cache; then the hypervisor plugs the NIC (QMP
    device_add on tap1, where no DHCP server runs). The port, and the seconds from
    device_add to the NIC's first ARP answer on its static address (None: none came
    within ARP_WAIT_S). drop_port removes the port and its network again. If the attach
    fails half-way, what it made is undone (nova's cache, the port, its network) before
    the error goes on, so the next attach in the same guest starts clean."""
    net2 = t.network(f"e2emeta-{tag}-{cloud.iid[:6]}")
    port2 = None
    attached = False
    try:
        sub2 = t.subnet(net2, ip_version=4, cidr=HOTPLUG_CIDR,
                        gateway_ip=vm.HOTPLUG_HOST_IP, enable_dhcp=dhcp)
        port2 = t.port(net2, cloud.iid, vm.HOTPLUG_MAC,
                       [{"subnet_id": sub2.id, "ip_address": vm.HOTPLUG_IP}])
        attached = True
        vifs = peer.nova_attach(cloud.conf, cloud.iid, [port2.id])
        if vifs != [cloud.port.id, port2.id]:
            raise BedError(f"after nova's attach the info cache has VIFs {vifs!r}")
        prober, events = start_prober(guest.ns, "tap1", vm.HOTPLUG_IP, vm.HOTPLUG_HOST_IP,
                                      ARP_WAIT_S)
        try:
            t0 = time.monotonic()
            QmpAttacher(str(guest.qmp_socket), timeout=30).attach(nic, "tap1")
            return port2, first_reply(events, t0, ARP_WAIT_S)
        finally:
            prober.terminate()
            prober.wait(10)
    except BaseException:
        with contextlib.suppress(Exception):
            if attached and port2 is not None:
                peer.nova_detach(cloud.conf, cloud.iid, port2.id)
        with contextlib.suppress(Exception):
            if port2 is not None:
                drop_port(t, port2)
            else:
                t.admin.network.delete_network(net2.id)
        raise


def detach_as_nova(peer: Peer, cloud: Cloud, guest: Guest, nic: Nic, port: Any
                   ) -> tuple[float, float]:
    """Detach as stock nova does: the hypervisor lets the NIC go (QMP device_del, until
    QEMU says DEVICE_DELETED), then nova's detach_interface unbinds the port and shrinks
    the info cache. Returns time.monotonic() when device_del was sent and when QEMU had
    said DEVICE_DELETED (the guest let the device go)."""
    sent = time.monotonic()
    QmpAttacher(str(guest.qmp_socket), timeout=30).detach(nic)
    deleted = time.monotonic()
    vifs = peer.nova_detach(cloud.conf, cloud.iid, port.id)
    if vifs != [cloud.port.id]:
        raise BedError(f"after nova's detach the info cache has VIFs {vifs!r}")
    return sent, deleted


def drop_port(t: Tenant, port: Any) -> None:
    """The hot-plugged port and its network (with its subnet) deleted from Neutron, so
    the next attach can have the same MAC and address."""
    t.admin.network.delete_port(port.id)
    t.admin.network.delete_network(port.network_id)
    for made in (("port", port.id), ("network", port.network_id)):
        if made in t.made:
            t.made.remove(made)


@contextlib.contextmanager
def metadata_route(nova: str, binding: Binding, guest: Guest) -> Iterator[str]:
    """The guest's http://169.254.169.254: the signing proxy in front of ``nova`` on that
    address (on the loopback of the guest's namespace), which the guest reaches through
    its default route (the subnet's gateway is the namespace's end of its link), as on a
    cloud. Yields the proxy's URL."""
    subprocess.run(["ip", "-n", guest.ns, "addr", "add", f"{METADATA_IP}/32", "dev", "lo"],
                   check=True)
    with metadata_proxy(nova, SECRET, binding, (METADATA_IP, 80), netns=guest.ns) as url:
        yield url


def agent(guest: Guest) -> GuestAgent:
    """A connection of its own to the guest's agent (QEMU's socket takes one client)."""
    return GuestAgent.unix(guest.qga_socket, timeout=30)


# -- what the guest says ------------------------------------------------------------------


def ip_json(ga: GuestAgent, *args: str) -> Any:
    """``ip -j ARGS`` in the guest, parsed."""
    res = ga.exec("/usr/bin/ip", ["-j", *args])
    if res.exitcode != 0:
        raise BedError(f"in the guest: ip -j {' '.join(args)}: exit {res.exitcode}: "
                       f"{res.stderr.decode(errors='replace').strip()[-300:]}")
    return json.loads(res.stdout or b"[]")


def run_in_guest(ga: GuestAgent, path: str, *args: str) -> tuple[int, str]:
    """A command's exit status and its stdout and stderr (as one text)."""
    res = ga.exec(path, list(args))
    return res.exitcode or 0, (res.stdout or b"").decode() + (res.stderr or b"").decode()


def exists(ga: GuestAgent, path: str) -> bool:
    return ga.exec("/usr/bin/test", ["-e", path]).exitcode == 0


def addrs(ga: GuestAgent, dev: str) -> list[tuple[str, int]]:
    """``dev``'s IPv4 addresses, as (address, prefix length)."""
    return [(a["local"], a["prefixlen"]) for a in ip_json(ga, "addr", "show", "dev", dev)[0]
            ["addr_info"] if a["family"] == "inet"]


def gw_routes(ga: GuestAgent, dev: str) -> set[tuple[str, str]]:
    """The routes through a gateway on ``dev``, as (destination, gateway)."""
    return {(r["dst"], r["gateway"]) for r in ip_json(ga, "-4", "route", "show", "dev", dev)
            if "gateway" in r}


def guest_log(ga: GuestAgent, since: int = 0) -> str:
    """The agent's log in the guest, from character ``since`` on."""
    return ga.read_file("/var/log/netinject.log").decode(errors="replace")[since:]


def wait_for(what: str, ok: Callable[[], bool], timeout: float,
             detail: Callable[[], Any] | None = None, interval: float = 0.5) -> float:
    """Seconds until ok() (polled every ``interval``); BedError saying ``what`` (and
    ``detail()``) after ``timeout``."""
    t0 = time.monotonic()
    while not ok():
        if time.monotonic() - t0 >= timeout:
            raise BedError(what + (f": {detail()!r}" if detail is not None else ""))
        time.sleep(interval)
    return time.monotonic() - t0


def eth1_config_gone(ga: GuestAgent, stack: str) -> bool:
    """Whether eth1's config is gone from the guest: the stack's files, its part of a
    shared file, its udev rule."""
    return (not any(exists(ga, p) for p in ETH1_FILES[stack])
            and (stack not in SHARED_FILE
                 or "eth1" not in ga.read_file(SHARED_FILE[stack]).decode())
            and vm.HOTPLUG_MAC not in ga.read_file(RULES).decode())


# -- what the metadata path says ----------------------------------------------------------


def facts(nova: str, binding: Binding, name: str) -> contract.NicFacts:
    """What the metadata path says of NIC ``name`` now (the answer the guest reads)."""
    status, _ctype, body = forward(nova, SECRET, binding, "GET", VD2, b"")
    if status != 200:
        raise BedError(f"nova's metadata API answered {status}: {body[:500]!r}")
    try:
        manifest = json.loads(body)["netinject"]["manifest"]
        records = contract.parse_manifest(manifest.encode())
    except (ValueError, LookupError, TypeError, AttributeError) as exc:
        # (nova stores {} when its call of the vendordata target fails: no netinject key)
        raise BedError(f"the metadata answer carries no netinject manifest "
                       f"({type(exc).__name__}: {exc}): {body[:300]!r}") from exc
    if records.facts is None or name not in records.facts:
        raise BedError(f"the metadata answer has no facts of {name}")
    return records.facts[name]


def expected_routes(nic: contract.NicFacts) -> set[tuple[str, str]]:
    """A NIC's routes as gw_routes shows them."""
    return {("default" if dst == "0.0.0.0/0" else dst, gw) for dst, gw in nic.routes}


# -- drift ----------------------------------------------------------------------------------


def change_in_neutron(t: Tenant, cloud: Cloud) -> None:
    """An operator's change in Neutron (nova hears of none of the subnet's): the first
    subnet gets one more DNS server (NEW_DNS) and host route (NEW_ROUTE), the port
    another fixed IP (NEW_IP)."""
    net_api = t.demo.network
    net_api.update_subnet(cloud.sub, dns_nameservers=[vm.HOST_IP, NEW_DNS],
                          host_routes=[{"destination": vm.HOST_ROUTE, "nexthop": vm.HOST_IP},
                                       {"destination": NEW_ROUTE, "nexthop": vm.HOST_IP}])
    net_api.update_port(cloud.port, fixed_ips=[{"subnet_id": cloud.sub.id,
                                                "ip_address": NEW_IP}])


def timespan(seconds: int) -> str:
    """``seconds`` as systemd writes a time span (systemctl show): '1min', '1h 30min'."""
    out = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(out) or "0"


def set_sync_period(ga: GuestAgent, period: int) -> None:
    """The drift timer's period, as an operator sets it: ``period=`` in
    /etc/netinject/sync.conf (60 s is the agent's floor), systemd's daemon-reload (the
    generator's drop-in), the timer restarted; BedError unless systemd then shows it."""
    ga.write_file(SYNC_CONF, f"period={period}\n".encode())
    for args in (("daemon-reload",), ("restart", SYNC_TIMER)):
        code, out = run_in_guest(ga, "/usr/bin/systemctl", *args)
        if code != 0:
            raise BedError(f"systemctl {' '.join(args)}: exit {code}: {out.strip()}")
    _code, out = run_in_guest(ga, "/usr/bin/systemctl", "show", SYNC_TIMER,
                              "-p", "TimersMonotonic")
    shown = [v.strip() for v in re.findall(r"OnUnitActiveUSec=([^;}]*)", out)]
    if timespan(period) not in shown:
        raise BedError(f"the timer's period is not {period} s: {out.strip()}")


def drifted(ga: GuestAgent) -> bool:
    """Whether the guest's own report shows all of change_in_neutron: eth0's new
    address, the new route, the new DNS server."""
    return (addrs(ga, "eth0") == [(NEW_IP, vm.PREFIX)]
            and (NEW_ROUTE, vm.HOST_IP) in gw_routes(ga, "eth0")
            and f"nameserver {NEW_DNS}" in
            ga.read_file("/etc/resolv.conf").decode().splitlines())
