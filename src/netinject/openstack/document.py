"""The instance document built from the live cloud, and the vendordata payload built from
the instance.

The document is the one ``netinject render INSTANCE.json`` reads (Neutron's own objects,
see sources/neutron.py), so the live path and the file path share one parser and one set
of checks. Errors name the Neutron object (``port <id>.fixed_ips[0].ip_address``) rather
than the document's list position, which means nothing to an operator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..drive import MANIFEST_PATH, payload_files
from ..errors import FieldError, InvalidInput
from ..guest import contract
from ..model import Instance
from ..naming import PortsPattern
from ..render import Options
from ..sources.neutron import parse_document
from .cloud import Snapshot, image_properties

PAYLOAD_FORMAT = contract.VENDOR_FORMATS[-1]
"""The ``format`` of the payload under vendor_data2.json's ``netinject`` key: the newest
the guest agent's contract reads (one definition for both sides)."""

_POS = re.compile(r"(ports|subnets|networks)\[([0-9]+)\]", re.ASCII)
_KIND = {"ports": "port", "subnets": "subnet", "networks": "network"}


@dataclass(frozen=True)
class Request:
    """What nova sends (and what the live commands read off the server)."""

    instance_id: str
    hostname: str | None
    name: str | None = None
    availability_zone: str | None = None


def document(req: Request, image: Mapping[str, Any] | None, snap: Snapshot,
             pattern: PortsPattern) -> dict[str, Any]:
    inst: dict[str, Any] = {"uuid": req.instance_id}
    if req.hostname:
        inst["hostname"] = req.hostname
    if req.name:
        inst["name"] = req.name
    if req.availability_zone:
        inst["availability_zone"] = req.availability_zone
    return {
        "instance": inst,
        "image": {"properties": image_properties(image) if image is not None else {}},
        "system_metadata": pattern.to_system_metadata(),
        "networks": [dict(n) for n in snap.networks],
        "subnets": [dict(s) for s in snap.subnets],
        "ports": [dict(p) for p in snap.ports],
    }


def _named(path: str, doc: Mapping[str, Any]) -> str:
    """``ports[2].fixed_ips[0]`` -> ``port <id>.fixed_ips[0]``."""
    def sub(m: re.Match[str]) -> str:
        items = doc.get(m.group(1))
        i = int(m.group(2))
        if isinstance(items, list) and i < len(items) and isinstance(items[i], Mapping):
            ident = items[i].get("id")
            if isinstance(ident, str):
                return f"{_KIND[m.group(1)]} {ident}"
        return m.group(0)
    return _POS.sub(sub, path)


def instance(doc: Mapping[str, Any]) -> Instance:
    """The validated instance; InvalidInput whose paths name the Neutron objects."""
    try:
        return parse_document(doc).instance
    except InvalidInput as exc:
        raise InvalidInput([FieldError(_named(e.path, doc), e.value, e.message)
                            for e in exc.errors], exc.source) from None


def payload(inst: Instance, options: Options | None = None) -> dict[str, Any]:
    """The JSON nova stores under vendor_data2.json's ``netinject`` key: the manifest and
    each payload file as text (readable in the metadata service), for every network
    stack; the agent installs its stack's files. ``{}`` for an image without the
    property, so the guest keeps DHCP."""
    if not inst.inject:
        return {}
    files = payload_files(inst, options)
    text = files.pop(MANIFEST_PATH.name)
    return {
        "format": PAYLOAD_FORMAT,
        "generator": f"netinject {__version__}",
        "instance": str(inst.uuid),
        "manifest": text.decode(),
        "files": {name: data.decode() for name, data in sorted(files.items())},
    }
