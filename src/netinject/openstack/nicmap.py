"""The NIC index map (ports_pattern) kept on the Neutron ports, as tags.

nova's server metadata cannot be written while the instance is BUILDING, which is when
nova calls the vendordata service; a port's tags can be written any time, come back with
the port and go with it. Each port of an instance carries one tag
``netinject:<instance uuid>:<index>``; the guest names the NIC ``eth<index>``.

Rules (a pure function of the ports as Neutron returns them, so service replicas that
see the same ports compute the same map and write the same tags):

* a port whose tag names this instance keeps its index;
* two ports claiming one index (a port re-attached after another took its freed index):
  the older port (created_at, then id) keeps it, the other is treated as new;
* a port tagged for another instance (it moved) drops that tag and is new here;
* new ports take the lowest free indexes in creation order: (created_at, id).

Creation order is as near as Neutron lets us get to nova's attach order (the ``--nic``
order, which is the VIF order in ``network_data.json`` but is not sent to the service):
nova creates the ports it allocates one after another in request order, but Neutron's
created_at has one-second resolution, and ports made beforehand (``--nic port-id=``)
carry their own creation time. Where the two orders differ, the NICs are still named
consistently (each name is pinned to its MAC); only ``eth<n>`` differs from the kernel's
PCI order. See docs/operator-guide.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..naming import MAX_INDEX, PortsPattern

PREFIX = "netinject:"
TAG_RE = re.compile(r"netinject:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
                    r":(0|[1-9][0-9]{0,3})", re.ASCII)


@dataclass(frozen=True)
class PortTags:
    id: str
    created_at: str
    tags: tuple[str, ...]

    @classmethod
    def from_port(cls, port: Mapping[str, Any]) -> PortTags:
        tags = port.get("tags")
        return cls(str(port.get("id")), str(port.get("created_at") or ""),
                   tuple(t for t in tags if isinstance(t, str))
                   if isinstance(tags, list) else ())

    def claim(self, instance: str) -> int | None:
        """The index this port's tags give it on ``instance``, if one."""
        for tag in self.tags:
            m = TAG_RE.fullmatch(tag)
            if m and m.group(1) == instance and int(m.group(2)) <= MAX_INDEX:
                return int(m.group(2))
        return None


@dataclass(frozen=True)
class Plan:
    pattern: PortsPattern
    tags: Mapping[str, tuple[str, ...]]  # port id -> its new tag list, for changed ports only


def plan(instance: str, ports: Iterable[PortTags]) -> Plan:
    instance = instance.lower()
    ordered = sorted(ports, key=lambda p: (p.created_at, p.id))
    kept: dict[str, int] = {}
    owner: dict[int, str] = {}
    for port in ordered:
        index = port.claim(instance)
        if index is not None and index not in owner:
            kept[port.id] = index
            owner[index] = port.id
    pattern = PortsPattern(kept).allocate(p.id for p in ordered)
    changes: dict[str, tuple[str, ...]] = {}
    for port in ordered:
        others = tuple(t for t in port.tags if not t.startswith(PREFIX))
        wanted = (*others, f"{PREFIX}{instance}:{pattern.entries[port.id]}")
        if set(wanted) != set(port.tags):
            changes[port.id] = wanted
    return Plan(pattern, changes)
