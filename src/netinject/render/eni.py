"""ifupdown's /etc/network/interfaces.

Per NIC, in index order: ``auto`` + ``allow-hotplug`` and one ``iface`` stanza per
address. Host routes are ``up`` add / ``down`` del pairs. The default route (``gateway``)
goes only on the lowest-index NIC whose subnet has one, per address family: a second
default route makes ifup fail. After the address is up a gratuitous-ARP burst tells the
network where the address lives now, so switches and peers converge at once.

Two styles:

* ``seed``: exactly the seed's lines (net-tools ``route``; ``arping -A -U -c 120 &``;
  no ``dns-nameservers``: DNS goes to resolv.conf only).
* ``default``: iproute2 only, for a minimal Debian image. Gratuitous ARP comes from the
  kernel (``arp_notify``: ifupdown adds the address before it sets the link up, and the
  kernel then announces it), plus an ``arping`` burst run in the background when arping
  is installed; a missing arping never fails ifup.

DHCP stanzas get no route lines: the DHCP server delivers routes, and adding one twice
would fail ifup.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from ..model import AddrMode, IfAddress, Instance, IPAddress, Nic, Route
from .base import Options, Rendered, Style

PATH = PurePosixPath("etc/network/interfaces")
INDENT = "        "
SEED_ARP_COUNT = 120
DEFAULT_ARP_COUNT = 3
ARPING = "/usr/bin/arping"


def render(instance: Instance, options: Options) -> Rendered:
    lines = ["# The loopback network interface", "auto lo", "iface lo inet loopback"]
    dns_nic = instance.dns_nic()
    for nic in instance.nics:
        lines.append("")
        lines.extend(_nic(nic, options.style, instance.carries_default_route,
                          dns=instance.dns if nic is dns_nic else ()))
    return Rendered({PATH: "\n".join(lines) + "\n"})


def _nic(nic: Nic, style: Style, default_route: Callable[[IfAddress], bool],
         dns: tuple[IPAddress, ...]) -> list[str]:
    name = nic.name
    out = [f"auto {name}", f"allow-hotplug {name}"]
    if not nic.addresses:
        out.append(f"iface {name} inet manual")
        if nic.mtu is not None:
            out.append(f"{INDENT}mtu {nic.mtu}")
        return out
    mtu_done = False
    dns_done = False
    arp_notify_done = False
    for n, addr in enumerate(nic.addresses):
        if n:
            out.append("")
        family = "inet" if addr.version == 4 else "inet6"
        body: list[str] = []
        hooks: list[str] = []
        if addr.is_static:
            assert addr.interface is not None
            out.append(f"iface {name} {family} static")
            iface = addr.interface
            if addr.version == 4:
                body.append(f"address {iface.ip}")
                body.append(f"netmask {iface.network.netmask}")
                if iface.network.prefixlen < 31:
                    body.append(f"broadcast {iface.network.broadcast_address}")
            else:
                body.append(f"address {iface.ip}")
                body.append(f"netmask {iface.network.prefixlen}")
            if addr.gateway is not None and default_route(addr):
                body.append(f"gateway {addr.gateway}")
            if nic.mtu is not None and not mtu_done:
                body.append(f"mtu {nic.mtu}")
                mtu_done = True
            if addr.version == 4:
                if style is Style.SEED:
                    hooks.append(f"post-up arping -A -U -I {name} -c {SEED_ARP_COUNT} "
                                 f"{iface.ip} &")
                else:
                    if not arp_notify_done:
                        hooks.append(f"pre-up echo 1 > /proc/sys/net/ipv4/conf/{name}/"
                                     "arp_notify || true")
                        arp_notify_done = True
                    hooks.append(f"post-up {ARPING} -q -U -c {DEFAULT_ARP_COUNT} -I {name} "
                                 f"{iface.ip} >/dev/null 2>&1 &")
        else:
            method = {AddrMode.DHCP: "dhcp", AddrMode.SLAAC: "auto",
                      AddrMode.DHCPV6_STATELESS: "auto"}[addr.mode]
            out.append(f"iface {name} {family} {method}")
            if addr.mode is AddrMode.DHCPV6_STATELESS:
                body.append("dhcp 1")
            if nic.mtu is not None and not mtu_done:
                hooks.append(f"pre-up ip link set dev {name} mtu {nic.mtu}")
                mtu_done = True
        # The seed's file has no dns-nameservers line (its DNS is in resolv.conf alone);
        # the default style also hands it to resolvconf where that is installed.
        if dns and not dns_done and addr.is_static and style is not Style.SEED:
            body.append("dns-nameservers " + " ".join(str(s) for s in dns))
            dns_done = True
        if addr.mode is not AddrMode.DHCP:
            for route in addr.routes:
                hooks.extend(_route_lines(route, name, style))
        out.extend(INDENT + line for line in body)
        if hooks:
            if style is Style.SEED:
                out.append("")
            out.extend(INDENT + line for line in hooks)
    return out


def _route_lines(route: Route, dev: str, style: Style) -> list[str]:
    dest, gw = route.destination, route.gateway
    if style is Style.SEED:
        if route.version == 4:
            spec = f"-net {dest.network_address} netmask {dest.netmask} gateway {gw} dev {dev}"
            return [f"down route del {spec}", f"up route add {spec}"]
        spec6 = f"{dest} gw {gw} dev {dev}"
        return [f"down route -A inet6 del {spec6}", f"up route -A inet6 add {spec6}"]
    ip = "ip" if route.version == 4 else "ip -6"
    spec = f"{dest} via {gw} dev {dev}"
    return [f"up {ip} route add {spec}", f"down {ip} route del {spec}"]
