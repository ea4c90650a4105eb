"""``netinject hotplug attach|detach --cloud NAME --server ID --port ID``: NIC hot-plug
from the live cloud.

The server (its ports by device_id, their subnets and networks, its image) and the port
are read through openstacksdk (live.py), the instance documents before and after are
built as the vendordata service builds them, and hotplug.attach_documents /
detach_documents do the guest's side (config first, one transaction; the old config
again when the NIC cannot be attached).

The NIC index comes from the port tags by the service's own rules (nicmap.plan): the
ports the server has keep theirs (pinned first, so a port added cannot move another's),
a new port takes the lowest free one. Neutron is written only once the guest has the new
config (attach: and the NIC is attached; detach: the NIC detached and its config gone):
the port bound to the server (device_id) and the tags that pin the map; on detach the
port's tag removed (its index free) and the port unbound. On any failure before that,
nothing is written. A port bound to another server or device is refused before anything
is touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import hotplug
from ..errors import UsageError
from ..qga import GuestAgent
from ..render import Options
from . import cloud, live
from .document import instance


@dataclass(frozen=True)
class CloudHotplug:
    """What the command did: the guest's side, and what was written to Neutron (in
    words, one entry per write; empty when nothing was)."""

    result: hotplug.HotplugResult
    written: tuple[str, ...]


def _port(srv: live.Server, port_id: str) -> Mapping[str, Any]:
    found = srv.port(port_id)
    if found is not None:
        return found
    try:
        return cloud.port(srv.conn, port_id)
    except cloud.CloudError as exc:
        if exc.status == 404:
            raise UsageError(f"--port: Neutron has no port {port_id}") from None
        raise


def _owner(port: Mapping[str, Any]) -> str:
    """The port's device_id as nova writes a server uuid ('' when unbound)."""
    device = port.get("device_id")
    if not isinstance(device, str) or not device:
        return ""
    try:
        return live.server_uuid(device)
    except UsageError:
        return device


def _refuse_other(srv: live.Server, port: Mapping[str, Any], port_id: str) -> None:
    owner = _owner(port)
    if owner and owner != srv.id:
        kind = port.get("device_owner") or "device"
        raise UsageError(f"port {port_id} belongs to another instance ({kind} {owner}), "
                         f"not server {srv.id}: nothing was changed (detach it there "
                         "first)")


def _write(srv: live.Server, nic: str, port_id: str, binding: Mapping[str, Any] | None,
           tags: Mapping[str, list[str]], done: str) -> tuple[str, ...]:
    """Write the port's binding (``binding``: its new device_id and device_owner, if
    they change) and the tags; the writes in words. CloudError saying what the guest
    has and what to write by hand when Neutron refuses."""
    written: list[str] = []
    try:
        if binding is not None:
            cloud.update_port(srv.conn, port_id, binding)
            written.append(f"port {port_id}: device_id {binding['device_id'] or '(none)'}")
        for pid, port_tags in sorted(tags.items()):
            cloud.set_tags(srv.conn, pid, port_tags)
            written.append(f"port {pid}: tags {','.join(sorted(port_tags)) or '(none)'}")
    except cloud.CloudError as exc:
        left = ([f"port {port_id}: device_id {binding['device_id'] or '(none)'}"]
                if binding is not None and not written else [])
        left += [f"port {p}: tags {','.join(sorted(t)) or '(none)'}"
                 for p, t in sorted(tags.items())
                 if not any(w.startswith(f"port {p}: tags") for w in written)]
        raise cloud.CloudError(
            f"{done} ({nic}), but writing Neutron failed: {exc}; written: "
            f"{'; '.join(written) or 'nothing'}; still to write (openstack port set / "
            f"unset): {'; '.join(left)}", exc.what, exc.status) from None
    return tuple(written)


def attach_port(srv: live.Server, port_id: str, ga: GuestAgent,
                attacher: hotplug.NicAttacher, tap: str | None,
                allow_dhcp_fallback: bool = False, timeout: float = 60.0,
                options: Options | None = None, side: hotplug.GuestSide | None = None,
                wait: bool = True) -> CloudHotplug:
    """Attach Neutron port ``port_id`` to the server's guest (config first), then bind
    and tag it in Neutron. A port already bound to this server (device_id) is taken as
    not attached yet; one bound elsewhere is refused (UsageError)."""
    port = _port(srv, port_id)
    _refuse_other(srv, port, port_id)
    bound = srv.port(port_id) is not None
    before = srv.without(port_id).pinned()
    after = before.with_ports([*before.snapshot.ports, port]).pinned()
    doc_before, doc_after = before.document(), after.document()
    instance(doc_before)  # bad Neutron data, named, before the guest is touched
    instance(doc_after)
    result = hotplug.attach_documents(doc_before, doc_after, port_id, ga, attacher, tap,
                                      allow_dhcp_fallback, timeout, options, side, wait)
    if not result.configured:  # (the DHCP fallback): the map is not the guest's
        return CloudHotplug(result, ())
    tags = live.tag_changes([*srv.snapshot.ports, port], after.snapshot.ports)
    binding = None if bound else {"device_id": srv.id}
    return CloudHotplug(result, _write(
        srv, result.nic.name, port_id, binding, tags,
        f"the guest has the new config and {result.nic.name} is attached"))


def detach_port(srv: live.Server, port_id: str, ga: GuestAgent,
                attacher: hotplug.NicAttacher, options: Options | None = None,
                side: hotplug.GuestSide | None = None) -> CloudHotplug:
    """Detach the port's NIC from the server's guest, remove its config there, then
    free its index (its tag) and unbind it in Neutron."""
    port = srv.port(port_id)
    if port is None:
        found = _port(srv, port_id)
        _refuse_other(srv, found, port_id)
        raise UsageError(f"port {port_id} is not attached to server {srv.id} (its "
                         "device_id is not the server's): nothing was changed")
    before = srv.pinned()
    after = before.without(port_id)
    doc_before, doc_after = before.document(), after.document()
    instance(doc_before)
    instance(doc_after)
    result = hotplug.detach_documents(doc_before, doc_after, port_id, ga, attacher,
                                      options, side)
    freed = {**port, "tags": live.without_map(live.tag_list(port), srv.id)}
    tags = live.tag_changes(srv.snapshot.ports, [*after.snapshot.ports, freed])
    owner = port.get("device_owner")
    binding: dict[str, Any] = {"device_id": ""}
    if isinstance(owner, str) and owner.startswith("compute:"):
        binding["device_owner"] = ""  # (as nova leaves a port it detached)
    return CloudHotplug(result, _write(
        srv, result.nic.name, port_id, binding, tags,
        f"{result.nic.name} is detached and its config is gone from the guest"))
