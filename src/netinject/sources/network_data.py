"""nova's OpenStack ``network_data.json`` (+ optional ``meta_data.json``) -> model.

This lets the same renderers serve stock OpenStack clouds; ``dump`` writes the format
back (the config drive's copy), in this one module with its parser. NIC order is the order of
nova's physical links (nova writes them in the instance's VIF order); each NIC is
``eth<position>``. A route to 0.0.0.0/0 (::/0) is the network's gateway, as nova writes
it. Networks of type ``ipv4_dhcp``/``ipv6_dhcp`` carry no address and render as DHCP.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import uuid as uuidlib
from collections.abc import Mapping
from typing import Any, Literal

from ..errors import ErrorCollector
from ..model import (
    MTU_MAX,
    MTU_MIN,
    AddrMode,
    Hostname,
    IfAddress,
    Instance,
    IPAddress,
    IPInterface,
    MacAddress,
    Nic,
    Route,
    prefix_problem,
    unique_dns,
)
from ..policy import inject_enabled
from . import _fields as f

# network type -> (ip version, mode); "static" types carry an address.
NETWORK_TYPES: dict[str, tuple[Literal[4, 6], AddrMode]] = {
    "ipv4": (4, AddrMode.STATIC),
    "ipv6": (6, AddrMode.STATIC),
    "ipv4_dhcp": (4, AddrMode.DHCP),
    "ipv6_dhcp": (6, AddrMode.DHCP),
    "ipv6_slaac": (6, AddrMode.SLAAC),
    "ipv6_dhcpv6-stateful": (6, AddrMode.DHCP),
    "ipv6_dhcpv6-stateless": (6, AddrMode.DHCPV6_STATELESS),
}
UNSUPPORTED_LINK_TYPES = {"bond", "vlan"}
# A prefix length, or a dotted (IPv4) or colon (IPv6) netmask: ASCII only, no zone id.
_MASK_RE = re.compile(r"[0-9]{1,3}|[0-9.]{7,15}|[0-9A-Fa-f:]{2,39}", re.ASCII)


def parse(network_data: Any, meta_data: Any = None, source: str = "") -> Instance:
    """Validate network_data.json (and meta_data.json); InvalidInput lists every error."""
    errors = ErrorCollector()
    nd = f.as_obj(network_data, "", errors)
    md = f.as_obj(meta_data, "meta_data", errors) if meta_data is not None else None
    if nd is None:
        if not errors.errors:
            errors.add("", network_data, "is not a network_data.json document (want a JSON "
                       "object)")
        errors.raise_if_any(source)
        raise AssertionError  # unreachable

    uuid: uuidlib.UUID | None = None
    hostname: Hostname | None = None
    name: str | None = None
    zone: str | None = None
    launch_index = 0
    props: dict[str, str] = {}
    if md is not None:
        uuid = f.as_uuid(f.get(md, "uuid", "meta_data.uuid", errors), "meta_data.uuid", errors)
        hn = f.as_str(md.get("hostname"), "meta_data.hostname", errors)
        if hn is not None:
            try:
                hostname = Hostname.parse(hn)
            except ValueError as exc:
                errors.add("meta_data.hostname", hn, str(exc))
        name = f.as_text(md.get("name"), "meta_data.name", errors)
        zone = f.as_text(md.get("availability_zone"), "meta_data.availability_zone", errors)
        launch_index = f.as_int(md.get("launch_index", 0), "meta_data.launch_index", errors,
                                0, 1 << 31) or 0
        props = f.as_str_map(md.get("meta"), "meta_data.meta", errors)

    links: dict[str, tuple[int, str]] = {}  # link id -> (index, path)
    link_info: list[tuple[MacAddress, str, int | None]] = []
    macs: dict[MacAddress, str] = {}
    for i, raw in enumerate(f.as_list(f.get(nd, "links", "links", errors), "links", errors)):
        path = f"links[{i}]"
        obj = f.as_obj(raw, path, errors)
        if obj is None:
            continue
        n = len(errors.errors)
        lid = f.as_ident(f.get(obj, "id", f"{path}.id", errors), f"{path}.id", errors)
        ltype = obj.get("type")
        if isinstance(ltype, str) and ltype in UNSUPPORTED_LINK_TYPES:
            errors.add(f"{path}.type", ltype, "links are not supported (physical NICs only)")
        mac = f.as_mac(f.get(obj, "ethernet_mac_address", f"{path}.ethernet_mac_address",
                             errors), f"{path}.ethernet_mac_address", errors)
        mtu = f.as_int(obj.get("mtu"), f"{path}.mtu", errors, MTU_MIN, MTU_MAX)
        vif = f.as_uuid(obj.get("vif_id"), f"{path}.vif_id", errors)
        if mac is not None and mac in macs:
            errors.add(f"{path}.ethernet_mac_address", str(mac), f"is also the MAC of {macs[mac]}")
        if lid is not None and lid in links:
            errors.add(f"{path}.id", lid, "is a duplicate link id")
        if len(errors.errors) != n or lid is None or mac is None:
            continue
        macs[mac] = path
        links[lid] = (len(link_info), path)
        link_info.append((mac, str(vif) if vif else "", mtu))

    global_dns = _dns(nd.get("services"), "services", errors)
    per_link: dict[int, list[IfAddress]] = {i: [] for i in range(len(link_info))}
    for i, raw in enumerate(f.as_list(nd.get("networks"), "networks", errors)):
        path = f"networks[{i}]"
        obj = f.as_obj(raw, path, errors)
        if obj is None:
            continue
        addr = _network(obj, path, errors)
        link = f.as_ident(f.get(obj, "link", f"{path}.link", errors), f"{path}.link", errors)
        if link is not None and link not in links:
            errors.add(f"{path}.link", link, "refers to no link in links[]")
            continue
        if addr is not None and link is not None:
            per_link[links[link][0]].append(addr)
    errors.raise_if_any(source)

    if uuid is None:
        # No meta_data.json: a stable id derived from the document, so re-renders of
        # the same input agree (the drive's first-boot check keys on it).
        digest = hashlib.sha256(json.dumps(nd, sort_keys=True).encode()).hexdigest()
        uuid = uuidlib.uuid5(uuidlib.NAMESPACE_URL, "netinject:network_data:" + digest)
    nics = tuple(
        Nic(index, mac, port, tuple(per_link[index]), mtu)
        for index, (mac, port, mtu) in enumerate(link_info))
    dns = unique_dns([*global_dns, *(ip for n in nics for a in n.addresses for ip in a.dns)])
    return Instance(uuid=uuid, nics=nics, hostname=hostname, name=name, dns=dns,
                    inject=inject_enabled(props, {}), availability_zone=zone,
                    launch_index=launch_index)


def _network(obj: Mapping[str, Any], path: str, errors: ErrorCollector) -> IfAddress | None:
    ntype = f.get(obj, "type", f"{path}.type", errors)
    if ntype is None:
        return None
    if not isinstance(ntype, str) or ntype not in NETWORK_TYPES:
        errors.add(f"{path}.type", ntype, f"is not one of {', '.join(NETWORK_TYPES)}")
        return None
    version, mode = NETWORK_TYPES[ntype]
    n = len(errors.errors)
    iface: IPInterface | None = None
    if mode is AddrMode.STATIC:
        iface = _interface(obj, path, version, errors)
    dns = _dns(obj.get("services"), f"{path}.services", errors)
    gateway: IPAddress | None = None
    routes: list[Route] = []
    for j, raw in enumerate(f.as_list(obj.get("routes"), f"{path}.routes", errors)):
        rpath = f"{path}.routes[{j}]"
        robj = f.as_obj(raw, rpath, errors)
        if robj is None:
            continue
        net = f.as_ip(f.get(robj, "network", f"{rpath}.network", errors), f"{rpath}.network",
                      errors)
        mask = robj.get("netmask")
        gw = f.as_ip(f.get(robj, "gateway", f"{rpath}.gateway", errors), f"{rpath}.gateway",
                     errors)
        if net is None or gw is None or mask is None:
            if mask is None:
                errors.missing(f"{rpath}.netmask")
            continue
        dest = _net_from_mask(net, mask, f"{rpath}.netmask", errors)
        if dest is None:
            continue
        if gw.version != version or dest.version != version:
            errors.add(f"{rpath}.gateway", str(gw), f"is not an IPv{version} address")
            continue
        if iface is not None and not (gw in iface.network
                                      or (gw.version == 6 and gw.is_link_local)):
            errors.add(f"{rpath}.gateway", str(gw), f"is not reachable on {iface.network}")
            continue
        if dest.prefixlen == 0:
            if gateway is not None and gateway != gw:
                errors.add(rpath, f"{dest} via {gw}", "is a second default route")
                continue
            gateway = gw
        else:
            routes.append(Route(dest, gw))
    if len(errors.errors) != n:
        return None
    return IfAddress(version, mode, iface, gateway, tuple(routes), tuple(dns))


def _interface(obj: Mapping[str, Any], path: str, version: int,
               errors: ErrorCollector) -> IPInterface | None:
    raw = f.get(obj, "ip_address", f"{path}.ip_address", errors)
    if raw is None:
        return None
    if not isinstance(raw, str):
        errors.add(f"{path}.ip_address", raw, "is not an IP address")
        return None
    addr_text, _, prefix = raw.partition("/")
    ip = f.as_ip(addr_text, f"{path}.ip_address", errors)
    if ip is None:
        return None
    if ip.version != version:
        errors.add(f"{path}.ip_address", raw, f"is not an IPv{version} address")
        return None
    mask = obj.get("netmask", prefix or None)
    if mask is None:
        errors.missing(f"{path}.netmask")
        return None
    net = _net_from_mask(ip, mask, f"{path}.netmask", errors, strict=False)
    if net is None:
        return None
    bad = prefix_problem(net.prefixlen, net.version)
    if bad is not None:
        # Name the field the prefix came from: netmask, or the address/prefix text.
        given = obj.get("netmask") is not None
        errors.add(f"{path}.netmask" if given else f"{path}.ip_address", mask if given else raw,
                   f"gives prefix length {net.prefixlen}: {bad}")
        return None
    return ipaddress.ip_interface(f"{ip}/{net.prefixlen}")


def _net_from_mask(ip: IPAddress, mask: Any, path: str, errors: ErrorCollector,
                   strict: bool = True) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A network from an address and a dotted/expanded netmask or a prefix length."""
    if isinstance(mask, int) and not isinstance(mask, bool):
        mask = str(mask)
    if not isinstance(mask, str) or not _MASK_RE.fullmatch(mask):
        errors.add(path, mask, "is not a netmask")
        return None
    try:
        if ":" in mask:
            m = ipaddress.IPv6Address(mask)
            bits = bin(int(m))[2:].zfill(128)
            if "01" in bits:
                raise ValueError
            prefix = str(bits.count("1"))
        else:
            prefix = mask
        return ipaddress.ip_network(f"{ip}/{prefix}", strict=strict)
    except ValueError:
        errors.add(path, mask, f"is not a valid netmask for {ip}")
        return None


def _dns(raw: Any, path: str, errors: ErrorCollector) -> list[IPAddress]:
    out: list[IPAddress] = []
    for i, item in enumerate(f.as_list(raw, path, errors)):
        spath = f"{path}[{i}]"
        obj = f.as_obj(item, spath, errors)
        if obj is None or obj.get("type") != "dns":
            continue
        ip = f.as_ip(f.get(obj, "address", f"{spath}.address", errors), f"{spath}.address",
                     errors)
        if ip is not None:
            out.append(ip)
    return out


# -- writing ---------------------------------------------------------------------------


def _link_id(nic: Nic) -> str:
    # nova names links after the tap device: "tap" + the port id's first 11 characters.
    return f"tap{nic.port_id[:11]}" if nic.port_id else nic.name


_ND_TYPES = {
    (4, AddrMode.STATIC): "ipv4",
    (6, AddrMode.STATIC): "ipv6",
    (4, AddrMode.DHCP): "ipv4_dhcp",
    (6, AddrMode.DHCP): "ipv6_dhcpv6-stateful",
    (6, AddrMode.SLAAC): "ipv6_slaac",
    (6, AddrMode.DHCPV6_STATELESS): "ipv6_dhcpv6-stateless",
}


def dump(instance: Instance) -> dict[str, Any]:
    """network_data.json in nova's format, every known address written as static (the
    config drive's copy: whichever agent the guest runs, it need not wait on DHCP).
    ``parse(dump(i))`` gives back i's NICs, addresses, routes and DNS."""
    links: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    for nic in instance.nics:
        link = _link_id(nic)
        links.append({
            "id": link,
            "vif_id": nic.port_id or None,
            "type": "phy",
            "mtu": nic.mtu,
            "ethernet_mac_address": str(nic.mac),
        })
        for addr in nic.addresses:
            # One default route per family, on the same stanza as in every format.
            networks.append(_nd_network(addr, len(networks), link, nic,
                                        instance.carries_default_route(addr)))
    return {
        "links": links,
        "networks": networks,
        "services": [{"type": "dns", "address": str(ip)} for ip in instance.dns],
    }


def _nd_network(addr: IfAddress, n: int, link: str, nic: Nic, default_route: bool
                ) -> dict[str, Any]:
    mode = addr.mode
    # Known addresses are static whatever the subnet's DHCP setting (the point of this
    # drive); SLAAC/stateless DHCPv6 stay as they are: the guest derives those itself.
    if addr.interface is not None and mode is AddrMode.DHCP:
        mode = AddrMode.STATIC
    net: dict[str, Any] = {
        "id": f"network{n}",
        "type": _ND_TYPES[(addr.version, mode)],
        "link": link,
        "network_id": nic.network_id or link,
    }
    if mode is AddrMode.STATIC and addr.interface is not None:
        iface = addr.interface
        net["ip_address"] = str(iface.ip)
        net["netmask"] = str(iface.network.netmask)
        routes = []
        if default_route and addr.gateway is not None:
            zero = "0.0.0.0" if addr.version == 4 else "::"
            routes.append({"network": zero, "netmask": zero, "gateway": str(addr.gateway)})
        routes.extend({"network": str(r.destination.network_address),
                       "netmask": str(r.destination.netmask),
                       "gateway": str(r.gateway)} for r in addr.routes)
        net["routes"] = routes
    net["services"] = [{"type": "dns", "address": str(ip)} for ip in addr.dns]
    return net
