"""systemd-networkd: one ``.network`` and one ``.link`` file per NIC.

``10-netinject-ethN.link`` names the NIC after its MAC (udev's net_setup_link applies it
when the NIC appears; the udev rule of the ``udev`` format pins the same name).
``10-netinject-ethN.network`` matches the NIC by MAC and holds its addresses, routes,
MTU and DNS. The ``10-`` prefix sorts before the ``50-``..``99-`` files images ship (a
stock ``99-default``-style DHCP match never sees the NIC: networkd applies the first
file that matches).

The default route goes only on the lowest NIC that has one, per address family, as in
every format. Static IPv6 turns router advertisements off (the address and routes are
all known); SLAAC and DHCPv6 keep them on.

networkd sends no gratuitous ARP of its own; the agent announces static IPv4 addresses
once they are up (see the guest agent), without delaying them as
``DuplicateAddressDetection=ipv4`` would (about 6 s).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from ..model import AddrMode, Instance, Nic
from .base import GENERATED, Options, Rendered, nic_comment, nic_routes

DIR = PurePosixPath("etc/systemd/network")


def paths(nic: Nic) -> tuple[PurePosixPath, PurePosixPath]:
    stem = f"10-netinject-{nic.name}"
    return DIR / f"{stem}.link", DIR / f"{stem}.network"


def render(instance: Instance, options: Options) -> Rendered:
    files = {}
    dns_nic = instance.dns_nic()
    for nic in instance.nics:
        link, network = paths(nic)
        files[link] = _link(nic)
        files[network] = _network(instance, nic, dns_nic is nic)
    return Rendered(files)


def _link(nic: Nic) -> str:
    lines = [GENERATED, nic_comment(nic), "[Match]",
             f"MACAddress={nic.mac}", "", "[Link]", f"Name={nic.name}"]
    return "\n".join(lines) + "\n"


def _dhcp(nic: Nic) -> str:
    v4 = any(a.version == 4 and a.mode is AddrMode.DHCP for a in nic.addresses)
    v6 = any(a.version == 6 and a.mode is AddrMode.DHCP for a in nic.addresses)
    return {(True, True): "yes", (True, False): "ipv4", (False, True): "ipv6"}.get(
        (v4, v6), "no")


def _network(instance: Instance, nic: Nic, carries_dns: bool) -> str:
    v6 = [a for a in nic.addresses if a.version == 6]
    accept_ra = any(a.mode is not AddrMode.STATIC for a in v6)
    lines = [GENERATED, nic_comment(nic), "[Match]", f"MACAddress={nic.mac}",
             "", "[Link]"]
    if nic.mtu is not None:
        lines.append(f"MTUBytes={nic.mtu}")
    lines.append("RequiredForOnline=yes" if nic.addresses else "RequiredForOnline=no")
    lines += ["", "[Network]", f"DHCP={_dhcp(nic)}",
              f"IPv6AcceptRA={'yes' if accept_ra else 'no'}"]
    if not nic.addresses:
        lines.append("LinkLocalAddressing=no")
    if any(a.is_static for a in nic.addresses):
        # Static addresses do not wait for the carrier: networkd otherwise waits for
        # the kernel's operstate up, which linkwatch holds back up to 1 s after a new
        # NIC's previous link event, under KVM as under emulation (a hot-plugged NIC
        # answered ARP 0.72 s after device_add instead of 1.62 s, bench hotplug). Since
        # systemd 246 IgnoreCarrierLoss= follows it: a link flap keeps the addresses
        # (on a NIC with DHCP or router advertisements besides, their leases too).
        lines.append("ConfigureWithoutCarrier=yes")
    if carries_dns:
        lines += [f"DNS={server}" for server in instance.dns]
    for addr in nic.addresses:
        if addr.is_static:
            assert addr.interface is not None
            lines += ["", "[Address]", f"Address={addr.interface}"]
    for destination, gateway in nic_routes(instance, nic):
        lines += ["", "[Route]", *([f"Destination={destination}"] if destination else []),
                  f"Gateway={gateway}"]
    return "\n".join(lines) + "\n"
