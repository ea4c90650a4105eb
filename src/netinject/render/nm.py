"""NetworkManager keyfiles: one ``netinject-ethN.nmconnection`` per NIC in
``/etc/NetworkManager/system-connections`` (root, 0600: NetworkManager ignores a keyfile
others can read).

A profile is bound to its NIC by MAC (``[ethernet] mac-address``); NetworkManager never
renames NICs, so the name comes from the udev rule of the ``udev`` format. Its uuid is
derived from the instance and the port (uuid5), so the same instance always gets the
same profiles. ``autoconnect-priority`` makes the profile win over an image's generic
DHCP profile for the same NIC.

Per address family: ``manual`` for static addresses, ``auto`` for SLAAC and DHCPv6
stateless (``addr-gen-mode=eui64``: the address Neutron computed from the MAC), ``dhcp``
for DHCPv6, ``auto`` for DHCPv4, ``disabled``/``ignore`` where the NIC has none. The
default route goes on the lowest NIC that has one, per family. DNS servers go on the
NIC that carries them in every format, in the section of their family (on the first
NIC configured for that family when that NIC is not). NetworkManager announces a new
IPv4 address with 3 gratuitous ARPs on its own.
"""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath

from ..model import AddrMode, Instance, IPAddress, Nic
from .base import GENERATED, Options, Rendered, nic_comment, nic_routes

DIR = PurePosixPath("etc/NetworkManager/system-connections")
PRIORITY = 100


def path(nic: Nic) -> PurePosixPath:
    return DIR / f"netinject-{nic.name}.nmconnection"


def profile_uuid(instance: Instance, nic: Nic) -> uuid.UUID:
    return uuid.uuid5(instance.uuid, f"netinject:{nic.port_id or nic.name}")


def render(instance: Instance, options: Options) -> Rendered:
    dns_on = {v: _dns_nic(instance, v) for v in (4, 6)}
    return Rendered({path(nic): _keyfile(instance, nic, tuple(
        s for s in instance.dns if dns_on[s.version] is nic)) for nic in instance.nics})


def _dns_nic(instance: Instance, version: int) -> Nic | None:
    preferred = instance.dns_nic()
    candidates = ([preferred] if preferred else []) + list(instance.nics)
    return next((n for n in candidates
                 if any(a.version == version for a in n.addresses)), None)


def _method(nic: Nic, version: int) -> str:
    modes = {a.mode for a in nic.addresses if a.version == version}
    if AddrMode.STATIC in modes:
        return "manual"
    if AddrMode.DHCP in modes:
        return "auto" if version == 4 else "dhcp"
    if modes:
        return "auto"  # SLAAC, DHCPv6 stateless
    return "disabled" if version == 4 else "ignore"


def _keyfile(instance: Instance, nic: Nic, dns: tuple[IPAddress, ...]) -> str:
    lines = [GENERATED, nic_comment(nic),
             "[connection]", f"id=netinject-{nic.name}",
             f"uuid={profile_uuid(instance, nic)}", "type=ethernet",
             f"autoconnect-priority={PRIORITY}", "",
             "[ethernet]", f"mac-address={str(nic.mac).upper()}"]
    if nic.mtu is not None:
        lines.append(f"mtu={nic.mtu}")
    for version in (4, 6):
        method = _method(nic, version)
        lines += ["", f"[ipv{version}]", f"method={method}"]
        if version == 6 and method == "auto":
            lines.append("addr-gen-mode=eui64")
        n = 0
        for addr in nic.addresses:
            if addr.version == version and addr.is_static:
                n += 1
                lines.append(f"address{n}={addr.interface}")
                if addr.gateway is not None and instance.carries_default_route(addr):
                    lines.append(f"gateway={addr.gateway}")
        routes = [f"{dest},{gw}" for dest, gw in nic_routes(instance, nic)
                  if dest is not None and dest.version == version]
        lines += [f"route{k}={r}" for k, r in enumerate(routes, start=1)]
        servers = [s for s in dns if s.version == version]
        if servers:
            lines.append("dns=" + "".join(f"{s};" for s in servers))
    return "\n".join(lines) + "\n"
