"""netplan: ``/etc/netplan/90-netinject.yaml`` (mode 0600: netplan warns about files
others can read), one ``ethernets`` entry per NIC.

Each NIC is matched by MAC and gets ``set-name`` (netplan then writes a ``.link`` file
and a udev rule for the name). No ``renderer`` key: the image's own netplan files choose
networkd or NetworkManager, and ours follows. ``90-`` sorts after the image's files, so
where both set the same key ours wins; the agent also moves the image's DHCP file for the
same NIC aside (a merged ``dhcp4: true`` would otherwise stay).

A NIC with static addresses also gets a drop-in for the ``.network`` file netplan's
networkd backend generates for it (``10-netplan-<name>.network``):
``ConfigureWithoutCarrier=yes``, as the networkd renderer writes, so networkd does not
wait for the kernel's operstate up (linkwatch holds it back up to 1 s). netplan's own
``ignore-carrier: true`` writes the same line, but netplan 0.101 (Debian 11) refuses the
whole file over that key; a drop-in every networkd since 239 reads. Under NetworkManager
nothing reads it.

Every value is printed from its parsed form and quoted where YAML 1.1 could read it as
something else (a MAC of decimal digit pairs is a base-60 integer to YAML 1.1).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from ..model import AddrMode, Instance, Nic
from .base import GENERATED, Options, Rendered, nic_comment, nic_routes

PATH = PurePosixPath("etc/netplan/90-netinject.yaml")
# (stacks.Netplan.dropins: where the agent takes these; the name netplan gives the file)
DROPIN = "etc/systemd/network/10-netplan-{name}.network.d/90-netinject.conf"


def render(instance: Instance, options: Options) -> Rendered:
    lines = [GENERATED, "network:", "  version: 2"]
    if instance.nics:
        lines.append("  ethernets:")
    dns_nic = instance.dns_nic()
    for nic in instance.nics:
        lines += _nic(instance, nic, dns_nic is nic)
    files = {PATH: "\n".join(lines) + "\n"}
    for nic in instance.nics:
        if any(a.is_static for a in nic.addresses):
            files[PurePosixPath(DROPIN.format(name=nic.name))] = "\n".join(
                [GENERATED, nic_comment(nic), "[Network]", "ConfigureWithoutCarrier=yes"]
            ) + "\n"
    return Rendered(files)


def _q(value: object) -> str:
    return f'"{value}"'


def _nic(instance: Instance, nic: Nic, carries_dns: bool) -> list[str]:
    modes = {(a.version, a.mode) for a in nic.addresses}
    v6 = [a for a in nic.addresses if a.version == 6]
    out = [f"    {nic.name}:", "      " + nic_comment(nic), "      match:",
           f"        macaddress: {_q(nic.mac)}", f"      set-name: {_q(nic.name)}"]
    if nic.mtu is not None:
        out.append(f"      mtu: {nic.mtu}")
    out.append(f"      dhcp4: {'true' if (4, AddrMode.DHCP) in modes else 'false'}")
    out.append(f"      dhcp6: {'true' if (6, AddrMode.DHCP) in modes else 'false'}")
    out.append(f"      accept-ra: "
               f"{'true' if any(a.mode is not AddrMode.STATIC for a in v6) else 'false'}")
    if (6, AddrMode.SLAAC) in modes or (6, AddrMode.DHCPV6_STATELESS) in modes:
        # Neutron computes SLAAC addresses from the MAC (EUI-64); NetworkManager would
        # otherwise pick a stable-privacy address Neutron does not know.
        out.append("      ipv6-address-generation: eui64")
    static = [a for a in nic.addresses if a.is_static]
    if static:
        out.append("      addresses:")
        out += [f"        - {_q(a.interface)}" for a in static]
    routes = nic_routes(instance, nic)
    if routes:
        out.append("      routes:")
        for to, via in routes:
            # A default route as its all-zeroes network, not netplan's "default": netplan
            # 0.101 (Debian 11) refuses "default" ("unicast route must include both a
            # 'to' and 'via' IP"); every release takes 0.0.0.0/0 and ::/0.
            dest = str(to) if to is not None else ("0.0.0.0/0" if via.version == 4
                                                    else "::/0")
            out += [f"        - to: {_q(dest)}", f"          via: {_q(via)}"]
    if carries_dns and instance.dns:
        out += ["      nameservers:", "        addresses:"]
        out += [f"          - {_q(server)}" for server in instance.dns]
    return out
