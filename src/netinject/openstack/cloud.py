"""Live reads of a cloud through openstacksdk: Glance images, Neutron ports, subnets and
networks, as the raw API objects (Neutron's and Glance's own field names, the same the
instance document uses), and port tags (the NIC index map).

openstacksdk resolves ``clouds.yaml`` (``--cloud NAME``), authenticates with keystoneauth
and finds the endpoints in the catalog; the proxies' raw ``get``/``put`` keep the API's
JSON as it is, so nothing is renamed between Neutron and the document parser.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import NetinjectError


class CloudError(NetinjectError):
    """The cloud could not be reached or refused a call (not the instance's data).

    ``what``: the call that failed, without the reason (no URL, no host): what the
    service may tell a caller; the message (for the log and the CLI) has the reason.
    ``status``: the HTTP status, when the cloud answered with one >= 400."""

    def __init__(self, message: str, what: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.what = what or "the cloud"
        self.status = status


@dataclass(frozen=True)
class Snapshot:
    """What the cloud holds for one instance: its ports and their subnets and networks,
    raw. ``revisions`` keys the service's cache: every object's revision_number."""

    ports: tuple[Mapping[str, Any], ...]
    subnets: tuple[Mapping[str, Any], ...]
    networks: tuple[Mapping[str, Any], ...]

    @property
    def revisions(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(
            (str(o.get("id")), int(o.get("revision_number") or 0))
            for o in (*self.ports, *self.subnets, *self.networks)))


def connect(cloud: str, timeout: float | None = None) -> Any:
    """An openstacksdk connection for a clouds.yaml entry (CloudError if there is none).

    ``timeout``: seconds for each API call (keystoneauth's session timeout).
    """
    import openstack
    import openstack.config.exceptions
    from keystoneauth1 import exceptions as ks_exc
    from openstack import exceptions as sdk_exc

    try:
        conn = openstack.connect(cloud=cloud, api_timeout=timeout)
    except openstack.config.exceptions.OpenStackConfigException as exc:
        raise CloudError(f"cloud {cloud!r}: {exc} (see clouds.yaml, or set "
                         "OS_CLIENT_CONFIG_FILE)", "the cloud's configuration") from None
    except (ks_exc.ClientException, sdk_exc.SDKException) as exc:
        raise CloudError(f"cloud {cloud!r}: {type(exc).__name__}: {exc}",
                         "the cloud's configuration") from None
    # One connection serves every thread of a service worker: keep-alive connections
    # for all of them (requests' default pool holds 10).
    from requests.adapters import HTTPAdapter

    for scheme in ("http://", "https://"):
        conn.session.session.mount(scheme, HTTPAdapter(pool_connections=16, pool_maxsize=64))
    return conn


def _call(what: str, conn: Any, service: str, method: str, path: str,
          **kwargs: Any) -> Any:
    """One API call (``conn.<service>.<method>(path, ...)``); every failure as
    CloudError: Keystone or the catalog (reached when the proxy is first looked up),
    the connection, a timeout, HTTP >= 400."""
    from keystoneauth1 import exceptions as ks_exc
    from openstack import exceptions as sdk_exc

    try:
        response = getattr(getattr(conn, service), method)(path, **kwargs)
    except (ks_exc.ClientException, sdk_exc.SDKException, OSError) as exc:
        raise CloudError(f"{what}: {type(exc).__name__}: {exc}", what) from None
    if response.status_code >= 400:
        raise CloudError(f"{what}: HTTP {response.status_code}: {_gist(response.text)}",
                         what, response.status_code)
    try:
        return response.json() if response.content else {}
    except ValueError:
        raise CloudError(f"{what}: the answer is not JSON", what) from None


def _gist(text: str) -> str:
    """An error body in one short line (services answer HTML or JSON)."""
    plain = re.sub(r"<[^>]*>", " ", text)
    plain = re.sub(r"\s+", " ", plain).strip()
    for head in ("404 Not Found ", "401 Unauthorized ", "403 Forbidden "):
        plain = plain.replace(head + head.strip(), head.strip())
    return plain[:200] or "(no message)"


def image(conn: Any, image_id: str) -> Mapping[str, Any]:
    """The Glance v2 image (custom properties are top-level keys)."""
    what = f"Glance: image {image_id}"
    body = _call(what, conn, "image", "get", f"/images/{image_id}")
    if not isinstance(body, Mapping):
        raise CloudError(f"{what}: not an image object", what)
    return body


def image_properties(body: Mapping[str, Any]) -> dict[str, str]:
    """The image's string-valued attributes (custom properties among them)."""
    return {k: v for k, v in body.items() if isinstance(v, str)}


def _list(conn: Any, kind: str, key: str, **params: Any) -> list[Mapping[str, Any]]:
    what = f"Neutron: list {kind}"
    body = _call(what, conn, "network", "get", f"/{kind}", params=params)
    items = body.get(key) if isinstance(body, Mapping) else None
    if not isinstance(items, list):
        raise CloudError(f"{what}: no {key!r} list in the answer", what)
    return [i for i in items if isinstance(i, Mapping)]


def ports(conn: Any, instance_id: str) -> list[Mapping[str, Any]]:
    return _list(conn, "ports", "ports", device_id=instance_id)


def referenced(found: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """The subnet ids of the ports' fixed IPs and their network ids, sorted."""
    subnet_ids = sorted({ip["subnet_id"] for p in found for ip in p.get("fixed_ips") or []
                         if isinstance(ip, Mapping) and isinstance(ip.get("subnet_id"), str)})
    network_ids = sorted({p["network_id"] for p in found
                          if isinstance(p.get("network_id"), str)})
    return subnet_ids, network_ids


def subnets(conn: Any, ids: Sequence[str]) -> list[Mapping[str, Any]]:
    return _list(conn, "subnets", "subnets", id=list(ids)) if ids else []


def networks(conn: Any, ids: Sequence[str]) -> list[Mapping[str, Any]]:
    return _list(conn, "networks", "networks", id=list(ids)) if ids else []


def snapshot(conn: Any, instance_id: str) -> Snapshot:
    """The instance's ports (device_id), with the subnets of their fixed IPs and their
    networks: three list calls, whatever the number of ports."""
    found = ports(conn, instance_id)
    subnet_ids, network_ids = referenced(found)
    return Snapshot(tuple(found), tuple(subnets(conn, subnet_ids)),
                    tuple(networks(conn, network_ids)))


def port(conn: Any, port_id: str) -> Mapping[str, Any]:
    """One Neutron port (CloudError if there is none, HTTP 404 among them)."""
    return _one(f"Neutron: port {port_id}", conn, "network", f"/ports/{port_id}", "port")


def _one(what: str, conn: Any, service: str, path: str, key: str) -> Mapping[str, Any]:
    """The object under ``key`` in a GET of ``path`` (CloudError if it is not one)."""
    body = _call(what, conn, service, "get", path)
    found = body.get(key) if isinstance(body, Mapping) else None
    if not isinstance(found, Mapping):
        raise CloudError(f"{what}: not a {key} object", what)
    return found


def update_port(conn: Any, port_id: str, fields: Mapping[str, Any]) -> None:
    """Change a port's attributes (PUT /ports/ID), e.g. its device_id."""
    _call(f"Neutron: update port {port_id}", conn, "network", "put", f"/ports/{port_id}",
          json={"port": dict(fields)})


def set_tags(conn: Any, port_id: str, tags: Sequence[str]) -> None:
    """Replace a port's tags (Neutron's tag extension: PUT /ports/ID/tags)."""
    _call(f"Neutron: tags of port {port_id}", conn, "network", "put",
          f"/ports/{port_id}/tags", json={"tags": list(tags)})


def server(conn: Any, server_id: str) -> Mapping[str, Any]:
    """A nova server (for the live commands: its image, name and ports)."""
    return _one(f"nova: server {server_id}", conn, "compute", f"/servers/{server_id}",
                "server")
