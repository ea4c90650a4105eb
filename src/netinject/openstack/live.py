"""The instance document from the live cloud, for the operator's commands
(``netinject render --cloud NAME --server ID``, ``netinject drive --cloud ...``): the
same reads and the same rendering as the vendordata service, without writing anything
(NIC indexes come from the port tags as they are; a port without one shows the index
the service would give it).
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from ..model import Instance
from . import cloud
from .document import Request, document, instance
from .service import _UUID, pattern_of


def load(cloud_name: str, server_id: str, image_id: str | None = None,
         hostname: str | None = None) -> Instance:
    """The validated instance. ``image_id``/``hostname`` given: nova's API is not asked
    (what nova would send the service); else both are read from the server."""
    if not _UUID.fullmatch(server_id):
        raise UsageError(f"--server: {server_id!r} is not a server uuid")
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
    req = Request(server_id.lower(), hostname or None, name, zone)
    image_body: Any = cloud.image(conn, image_id) if image_id else None
    snap = cloud.snapshot(conn, req.instance_id)
    if not snap.ports:
        raise UsageError(f"server {server_id} has no ports in Neutron (device_id)")
    return instance(document(req, image_body, snap, pattern_of(req.instance_id, snap)))
