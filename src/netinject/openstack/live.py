"""The instance document from the live cloud, for the operator's commands
(``netinject render --cloud NAME --server ID``, ``netinject drive --cloud ...``,
``netinject sync --cloud ...``, ``netinject hotplug attach|detach --cloud ...``): the same
reads and the same rendering as the vendordata service. ``load`` writes nothing (NIC
indexes come from the port tags as they are; a port without one shows the index the
service would give it); the commands that change a running guest write the NIC map's
tags once the guest took the config (openstack/attach.py, cli/commands/sync.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import UsageError
from ..model import Instance
from . import cloud, nicmap
from .document import Request, document, instance
from .service import _UUID


def server_uuid(text: str, what: str = "--server") -> str:
    """A uuid (a server's, a port's) as OpenStack writes it (lower case, dashes);
    UsageError naming ``what`` otherwise."""
    if not _UUID.fullmatch(text):
        raise UsageError(f"{what}: {text!r} is not a uuid")
    return str(uuid.UUID(text))


@dataclass(frozen=True)
class Server:
    """What the cloud holds for one server, read once: nova's request (its uuid,
    hostname, name, zone), its image (Glance) and its ports with their subnets and
    networks (Neutron, the ports by device_id), and the connection that read them."""

    conn: Any
    request: Request
    image: Mapping[str, Any] | None
    snapshot: cloud.Snapshot

    @property
    def id(self) -> str:
        return self.request.instance_id

    def port(self, port_id: str) -> Mapping[str, Any] | None:
        return next((p for p in self.snapshot.ports if p.get("id") == port_id), None)

    def plan(self) -> nicmap.Plan:
        """The NIC map the port tags give (the vendordata service's rules), and the tags
        that would pin it."""
        return nicmap.plan(self.id, [nicmap.PortTags.from_port(p)
                                     for p in self.snapshot.ports])

    def document(self) -> dict[str, Any]:
        """The instance document (document.instance checks it), NIC indexes from the
        port tags (plan)."""
        return document(self.request, self.image, self.snapshot, self.plan().pattern)

    def pinned(self) -> Server:
        """The same server with every port's tags as the NIC map makes them (in memory:
        nothing is written), so that ports added or removed afterwards cannot move
        another port's index."""
        plan = self.plan()
        ports = [{**p, "tags": list(plan.tags.get(str(p.get("id")), tag_list(p)))}
                 for p in self.snapshot.ports]
        return replace(self, snapshot=replace(self.snapshot, ports=tuple(ports)))

    def without(self, port_id: str) -> Server:
        return self.with_ports([p for p in self.snapshot.ports if p.get("id") != port_id])

    def with_ports(self, ports: Sequence[Mapping[str, Any]]) -> Server:
        """The same server with these ports (their subnets and networks read from
        Neutron where not known yet; those no port uses left out)."""
        subnet_ids, network_ids = cloud.referenced(ports)
        known_subnets = {s.get("id"): s for s in self.snapshot.subnets}
        known_networks = {n.get("id"): n for n in self.snapshot.networks}
        subnets = {**known_subnets, **{s.get("id"): s for s in cloud.subnets(
            self.conn, [i for i in subnet_ids if i not in known_subnets])}}
        networks = {**known_networks, **{n.get("id"): n for n in cloud.networks(
            self.conn, [i for i in network_ids if i not in known_networks])}}
        return replace(self, snapshot=cloud.Snapshot(
            tuple(ports), tuple(subnets[i] for i in subnet_ids if i in subnets),
            tuple(networks[i] for i in network_ids if i in networks)))


def read(cloud_name: str, server_id: str, image_id: str | None = None,
         hostname: str | None = None) -> Server:
    """The server as the cloud has it. ``image_id``/``hostname`` given: nova's API is not
    asked (what nova would send the service); else both are read from the server."""
    server_id = server_uuid(server_id)
    conn = cloud.connect(cloud_name, 10.0)
    name: str | None = None
    zone: str | None = None
    if image_id is None or hostname is None:
        srv = cloud.server(conn, server_id)
        image = srv.get("image")
        found_image = image.get("id") if isinstance(image, dict) else None
        image_id = image_id if image_id is not None else (found_image or "")
        host = srv.get("OS-EXT-SRV-ATTR:hostname") or srv.get("name")
        hostname = hostname if hostname is not None else (
            host if isinstance(host, str) else None)
        name = srv.get("name") if isinstance(srv.get("name"), str) else None
        zone_raw = srv.get("OS-EXT-AZ:availability_zone")
        zone = zone_raw if isinstance(zone_raw, str) else None
    req = Request(server_id, hostname or None, name, zone)
    image_body: Any = cloud.image(conn, image_id) if image_id else None
    return Server(conn, req, image_body, cloud.snapshot(conn, req.instance_id))


def load(cloud_name: str, server_id: str, image_id: str | None = None,
         hostname: str | None = None) -> Instance:
    """The validated instance (see read)."""
    srv = read(cloud_name, server_id, image_id, hostname)
    if not srv.snapshot.ports:
        raise UsageError(f"server {server_id} has no ports in Neutron (device_id)")
    return instance(srv.document())


def tag_list(port: Mapping[str, Any]) -> list[str]:
    tags = port.get("tags")
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def tag_changes(now: Sequence[Mapping[str, Any]], wanted: Sequence[Mapping[str, Any]]
                ) -> dict[str, list[str]]:
    """{port id: its whole new tag list} for each port in ``wanted`` whose tags differ
    from that port's in ``now`` (Neutron's ports as read)."""
    real = {str(p.get("id")): set(tag_list(p)) for p in now}
    return {str(p.get("id")): tag_list(p) for p in wanted
            if set(tag_list(p)) != real.get(str(p.get("id")), set())}


def write_tags(conn: Any, tags: Mapping[str, Sequence[str]]) -> None:
    """Write port tags ({port id: its whole new tag list})."""
    for port_id, port_tags in sorted(tags.items()):
        cloud.set_tags(conn, port_id, port_tags)


def without_map(tags: Sequence[str], instance_id: str) -> list[str]:
    """A port's tags without the NIC map's tag for ``instance_id`` (the index freed)."""
    return [t for t in tags
            if not ((m := nicmap.TAG_RE.fullmatch(t)) and m.group(1) == instance_id)]
