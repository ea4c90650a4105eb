"""Instance document (Neutron API objects + instance facts) -> validated model.

Field names are Neutron's own (v2.0 API), so ``openstack port show -f json`` output can
be pasted in. Unknown fields are ignored; missing required fields are errors.
"""

from __future__ import annotations

import ipaddress
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass
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
    IPNetwork,
    MacAddress,
    Nic,
    Route,
    prefix_problem,
    unique_dns,
)
from ..naming import PortsPattern, updated_system_metadata
from ..policy import inject_enabled
from . import _fields as f

_V6_MODES = {"slaac", "dhcpv6-stateful", "dhcpv6-stateless"}


@dataclass(frozen=True)
class Subnet:
    id: str
    network_id: str
    version: Literal[4, 6]
    cidr: IPNetwork
    gateway: IPAddress | None
    dhcp: bool
    dns: tuple[IPAddress, ...]
    routes: tuple[Route, ...]
    ipv6_address_mode: str | None


@dataclass(frozen=True)
class Port:
    id: str
    mac: MacAddress
    network_id: str
    fixed_ips: tuple[tuple[str, IPAddress], ...]


@dataclass(frozen=True)
class LoadedInstance:
    """The model plus what the compute node must store back (system metadata)."""

    instance: Instance
    system_metadata: Mapping[str, str]


def parse_subnet(raw: Any, path: str, errors: ErrorCollector) -> Subnet | None:
    obj = f.as_obj(raw, path, errors)
    if obj is None:
        if raw is None:
            errors.missing(path)
        return None
    n = len(errors.errors)
    sid = f.as_ident(f.get(obj, "id", f"{path}.id", errors), f"{path}.id", errors)
    netid = f.as_ident(f.get(obj, "network_id", f"{path}.network_id", errors),
                       f"{path}.network_id", errors)
    version = f.as_int(f.get(obj, "ip_version", f"{path}.ip_version", errors),
                       f"{path}.ip_version", errors, 4, 6)
    if version not in (None, 4, 6):
        errors.add(f"{path}.ip_version", version, "must be 4 or 6")
        version = None
    cidr = f.as_network(f.get(obj, "cidr", f"{path}.cidr", errors), f"{path}.cidr", errors)
    if cidr is not None and version is not None and cidr.version != version:
        errors.add(f"{path}.cidr", str(cidr), f"is not an IPv{version} network")
        cidr = None
    if cidr is not None and (bad := prefix_problem(cidr.prefixlen, cidr.version, "subnet")):
        errors.add(f"{path}.cidr", str(cidr), f"has prefix length {cidr.prefixlen}: {bad}")
        cidr = None
    gateway = f.as_ip(obj.get("gateway_ip"), f"{path}.gateway_ip", errors)
    if gateway is not None and cidr is not None and not _reachable(gateway, cidr):
        errors.add(f"{path}.gateway_ip", str(gateway), f"is not reachable on subnet {cidr}")
    dhcp = f.as_bool(obj.get("enable_dhcp", True), f"{path}.enable_dhcp", errors)
    dns: list[IPAddress] = []
    for i, item in enumerate(f.as_list(obj.get("dns_nameservers"),
                                       f"{path}.dns_nameservers", errors)):
        ip = f.as_ip(item, f"{path}.dns_nameservers[{i}]", errors)
        if ip is not None:
            dns.append(ip)
    routes: list[Route] = []
    for i, item in enumerate(f.as_list(obj.get("host_routes"), f"{path}.host_routes", errors)):
        rpath = f"{path}.host_routes[{i}]"
        robj = f.as_obj(item, rpath, errors)
        if robj is None:
            continue
        route = parse_route(
            robj.get("destination"), f"{rpath}.destination",
            robj.get("nexthop"), f"{rpath}.nexthop", cidr, errors)
        if route is not None:
            routes.append(route)
    mode = obj.get("ipv6_address_mode")
    if mode is not None and (not isinstance(mode, str) or mode not in _V6_MODES):
        errors.add(f"{path}.ipv6_address_mode", mode,
                   f"is not one of {', '.join(sorted(_V6_MODES))}")
        mode = None
    if len(errors.errors) != n or sid is None or netid is None or version is None \
            or cidr is None or dhcp is None:
        return None
    return Subnet(sid, netid, 4 if version == 4 else 6, cidr, gateway, dhcp, tuple(dns),
                  tuple(routes), mode if version == 6 else None)


def parse_route(dest_raw: Any, dest_path: str, gw_raw: Any, gw_path: str,
                cidr: IPNetwork | None, errors: ErrorCollector) -> Route | None:
    """A host route: destination network and a next hop reachable on ``cidr``."""
    if dest_raw is None:
        errors.missing(dest_path)
    if gw_raw is None:
        errors.missing(gw_path)
    dest = f.as_network(dest_raw, dest_path, errors)
    gw = f.as_ip(gw_raw, gw_path, errors)
    if dest is None or gw is None:
        return None
    if dest.version != gw.version:
        errors.add(gw_path, str(gw), f"is not of the same IP version as {dest}")
        return None
    if cidr is not None and dest.version != cidr.version:
        errors.add(dest_path, str(dest), f"is not of the same IP version as subnet {cidr}")
        return None
    if dest.prefixlen == 0:
        errors.add(dest_path, str(dest),
                   "is a default route; set the subnet's gateway_ip instead (a second "
                   "default route makes ifup fail)")
        return None
    if cidr is not None and not _reachable(gw, cidr):
        errors.add(gw_path, str(gw), f"is not reachable on subnet {cidr}")
        return None
    return Route(dest, gw)


def _reachable(ip: IPAddress, cidr: IPNetwork) -> bool:
    if ip.version != cidr.version:
        return False
    if ip.version == 6 and ip.is_link_local:
        return True
    return ip in cidr


def parse_port(raw: Any, path: str, errors: ErrorCollector) -> Port | None:
    obj = f.as_obj(raw, path, errors)
    if obj is None:
        if raw is None:
            errors.missing(path)
        return None
    n = len(errors.errors)
    pid = f.as_uuid(f.get(obj, "id", f"{path}.id", errors), f"{path}.id", errors)
    mac = f.as_mac(f.get(obj, "mac_address", f"{path}.mac_address", errors),
                   f"{path}.mac_address", errors)
    netid = f.as_ident(f.get(obj, "network_id", f"{path}.network_id", errors),
                       f"{path}.network_id", errors)
    ips: list[tuple[str, IPAddress]] = []
    for i, item in enumerate(f.as_list(obj.get("fixed_ips"), f"{path}.fixed_ips", errors)):
        ipath = f"{path}.fixed_ips[{i}]"
        iobj = f.as_obj(item, ipath, errors)
        if iobj is None:
            continue
        sid = f.as_ident(f.get(iobj, "subnet_id", f"{ipath}.subnet_id", errors),
                         f"{ipath}.subnet_id", errors)
        ip = f.as_ip(f.get(iobj, "ip_address", f"{ipath}.ip_address", errors),
                     f"{ipath}.ip_address", errors)
        if sid is not None and ip is not None:
            ips.append((sid, ip))
    if len(errors.errors) != n or pid is None or mac is None or netid is None:
        return None
    return Port(str(pid), mac, netid, tuple(ips))


def parse_document(doc: Any, source: str = "") -> LoadedInstance:
    """Validate an instance document; raise InvalidInput listing every problem. Each
    part is read even when an earlier one failed, so one run names all the problems;
    the model is built only from a document without any."""
    errors = ErrorCollector()
    top = _document(doc, source, errors)
    facts = _instance_facts(top, errors)
    image = f.as_obj(top.get("image"), "image", errors) or {}
    props = f.as_str_map(image.get("properties"), "image.properties", errors)
    sysmeta = f.as_str_map(top.get("system_metadata"), "system_metadata", errors)
    networks = _networks(top, errors)
    subnets, invalid_subnets = _subnets(top, networks, errors)
    ports = _ports(top, networks, subnets, invalid_subnets, errors)
    pattern = PortsPattern.empty()
    with errors.catching():
        pattern = PortsPattern.from_system_metadata(sysmeta)
    errors.raise_if_any(source)
    assert facts.uuid is not None

    pattern = pattern.allocate(p.id for p in ports)
    nics = tuple(sorted(
        (build_nic(p, pattern.entries[p.id], subnets, networks) for p in ports),
        key=lambda n: n.index))
    instance = Instance(
        uuid=facts.uuid, nics=nics, hostname=facts.hostname, name=facts.name,
        dns=unique_dns(ip for nic in nics for a in nic.addresses for ip in a.dns),
        inject=inject_enabled(props, sysmeta), availability_zone=facts.zone,
        launch_index=facts.launch_index or 0)
    return LoadedInstance(instance, updated_system_metadata(sysmeta, pattern))


def _document(doc: Any, source: str, errors: ErrorCollector) -> Mapping[str, Any]:
    """The document's top-level object; anything else is refused at once (there is
    nothing further to check)."""
    top = f.as_obj(doc, "", errors)
    if top is None:
        if not errors.errors:
            errors.add("", doc, "is not an instance document (want a JSON object)")
        errors.raise_if_any(source)
        raise AssertionError  # unreachable
    return top


@dataclass(frozen=True)
class _InstanceFacts:
    """The ``instance`` object's fields (None where missing or invalid)."""

    uuid: uuidlib.UUID | None
    hostname: Hostname | None
    name: str | None
    zone: str | None
    launch_index: int | None


def _instance_facts(top: Mapping[str, Any], errors: ErrorCollector) -> _InstanceFacts:
    """``instance``: uuid (required; not reported missing again when ``instance``
    itself is missing or not an object), hostname, name, zone, launch index."""
    raw_inst = f.get(top, "instance", "instance", errors)
    inst = f.as_obj(raw_inst, "instance", errors) or {}
    uuid = f.as_uuid(f.get(inst, "uuid", "instance.uuid", errors) if raw_inst is not None
                     and isinstance(raw_inst, Mapping) else None, "instance.uuid", errors)
    return _InstanceFacts(
        uuid, _hostname(inst.get("hostname"), "instance.hostname", errors),
        f.as_text(inst.get("name"), "instance.name", errors),
        f.as_text(inst.get("availability_zone"), "instance.availability_zone", errors),
        f.as_int(inst.get("launch_index", 0), "instance.launch_index", errors, 0, 1 << 31))


def _networks(top: Mapping[str, Any], errors: ErrorCollector) -> dict[str, int | None]:
    """``networks``: each valid network's id and MTU (None: not given)."""
    networks: dict[str, int | None] = {}
    for i, raw in enumerate(f.as_list(f.get(top, "networks", "networks", errors),
                                      "networks", errors)):
        path = f"networks[{i}]"
        obj = f.as_obj(raw, path, errors)
        if obj is None:
            continue
        nid = f.as_ident(f.get(obj, "id", f"{path}.id", errors), f"{path}.id", errors)
        mtu = f.as_int(obj.get("mtu"), f"{path}.mtu", errors, MTU_MIN, MTU_MAX)
        if nid is None:
            continue
        if nid in networks:
            errors.add(f"{path}.id", nid, "is a duplicate network id")
        networks[nid] = mtu
    return networks


def _subnets(top: Mapping[str, Any], networks: Mapping[str, int | None],
             errors: ErrorCollector) -> tuple[dict[str, Subnet], set[str]]:
    """``subnets``: the valid ones by id, and the ids of those that failed validation
    (references to them are not reported again as dangling: their own errors are)."""
    subnets: dict[str, Subnet] = {}
    raw_subnets = f.as_list(f.get(top, "subnets", "subnets", errors), "subnets", errors)
    invalid: set[str] = {s["id"] for s in raw_subnets
                         if isinstance(s, Mapping) and isinstance(s.get("id"), str)}
    for i, raw in enumerate(raw_subnets):
        subnet = parse_subnet(raw, f"subnets[{i}]", errors)
        if subnet is None:
            continue
        if subnet.id in subnets:
            errors.add(f"subnets[{i}].id", subnet.id, "is a duplicate subnet id")
        if subnet.network_id not in networks:
            errors.add(f"subnets[{i}].network_id", subnet.network_id,
                       "refers to no network in networks[]")
        subnets[subnet.id] = subnet
    return subnets, invalid - set(subnets)


def _ports(top: Mapping[str, Any], networks: Mapping[str, int | None],
           subnets: Mapping[str, Subnet], invalid_subnets: set[str],
           errors: ErrorCollector) -> list[Port]:
    """``ports``: the valid ones, in order. A port is left out if it repeats an
    earlier kept port's id or MAC, or refers to a network or subnet it cannot use."""
    ports: list[Port] = []
    port_paths: dict[str, str] = {}
    macs: dict[MacAddress, str] = {}
    for i, raw in enumerate(f.as_list(f.get(top, "ports", "ports", errors), "ports", errors)):
        path = f"ports[{i}]"
        port = parse_port(raw, path, errors)
        if port is None:
            continue
        ok = _port_is_unique(port, path, port_paths, macs, errors)
        if port.network_id not in networks:
            errors.add(f"{path}.network_id", port.network_id,
                       "refers to no network in networks[]")
            ok = False
        ok = _fixed_ips_fit(port, path, subnets, invalid_subnets, errors) and ok
        if ok:
            ports.append(port)
            port_paths[port.id] = path
            macs[port.mac] = path
    return ports


def _port_is_unique(port: Port, path: str, port_paths: Mapping[str, str],
                    macs: Mapping[MacAddress, str], errors: ErrorCollector) -> bool:
    """Whether the port's id and MAC are not those of a port already kept (both are
    checked, so both are reported)."""
    ok = True
    if port.id in port_paths:
        errors.add(f"{path}.id", port.id, f"is a duplicate of {port_paths[port.id]}.id")
        ok = False
    if port.mac in macs:
        errors.add(f"{path}.mac_address", str(port.mac),
                   f"is also the MAC of {macs[port.mac]}")
        ok = False
    return ok


def _fixed_ips_fit(port: Port, path: str, subnets: Mapping[str, Subnet],
                   invalid_subnets: set[str], errors: ErrorCollector) -> bool:
    """Whether every fixed IP names a known subnet of the port's network and lies inside
    it, not on its network or (IPv4, up to /30) broadcast address. Every IP is checked."""
    ok = True
    for j, (sid, ip) in enumerate(port.fixed_ips):
        ipath = f"{path}.fixed_ips[{j}]"
        sub = subnets.get(sid)
        if sub is None:
            if sid not in invalid_subnets:
                errors.add(f"{ipath}.subnet_id", sid, "refers to no subnet in subnets[]")
            ok = False
            continue
        if sub.network_id != port.network_id:
            errors.add(f"{ipath}.subnet_id", sid,
                       f"belongs to network {sub.network_id!r}, not the port's "
                       f"network {port.network_id!r}")
            ok = False
        if ip not in sub.cidr:
            errors.add(f"{ipath}.ip_address", str(ip), f"is not inside subnet {sub.cidr}")
            ok = False
        elif ip in (sub.cidr.network_address, *(
                [sub.cidr.broadcast_address] if sub.version == 4
                and sub.cidr.prefixlen < 31 else [])):
            errors.add(f"{ipath}.ip_address", str(ip),
                       f"is the network or broadcast address of {sub.cidr}")
            ok = False
    return ok


def build_nic(port: Port, index: int, subnets: Mapping[str, Subnet],
              networks: Mapping[str, int | None]) -> Nic:
    addrs: list[IfAddress] = []
    for sid, ip in port.fixed_ips:
        sub = subnets[sid]
        iface = ipaddress.ip_interface(f"{ip}/{sub.cidr.prefixlen}")
        mode = AddrMode.STATIC
        if sub.ipv6_address_mode == "slaac":
            mode = AddrMode.SLAAC
        elif sub.ipv6_address_mode == "dhcpv6-stateless":
            mode = AddrMode.DHCPV6_STATELESS
        addrs.append(IfAddress(sub.version, mode, iface, sub.gateway, sub.routes, sub.dns,
                               sub.id))
    return Nic(index, port.mac, port.id, tuple(addrs), networks.get(port.network_id),
               port.network_id)


def _hostname(raw: Any, path: str, errors: ErrorCollector) -> Hostname | None:
    text = f.as_str(raw, path, errors)
    if text is None:
        return None
    try:
        return Hostname.parse(text)
    except ValueError as exc:
        errors.add(path, text, str(exc))
        return None
