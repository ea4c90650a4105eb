"""Typed field readers shared by the input parsers.

Each reader takes the raw value, its path in the document and an ErrorCollector; it
returns the typed value, or None after recording a FieldError that names the path and
quotes the value. Parsers call them for every field, so one run reports every problem.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from ..errors import MISSING, ErrorCollector
from ..model import IPAddress, IPNetwork, MacAddress, parse_ip, parse_network, parse_uuid

_ABSENT = object()


def get(obj: Mapping[str, Any], key: str, path: str, errors: ErrorCollector,
        *, required: bool = True) -> Any:
    """The raw value of ``obj[key]``; records a missing-field error if required."""
    if key in obj and obj[key] is not None:
        return obj[key]
    if required:
        errors.missing(path)
    return None


def as_obj(value: Any, path: str, errors: ErrorCollector) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        errors.add(path, value, "must be a JSON object")
        return None
    return value


def as_list(value: Any, path: str, errors: ErrorCollector) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        errors.add(path, value, "must be a JSON list")
        return []
    return value


def as_str(value: Any, path: str, errors: ErrorCollector) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        errors.add(path, value, "must be a non-empty string")
        return None
    return value


_IDENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,254}", re.ASCII)


def as_ident(value: Any, path: str, errors: ErrorCollector) -> str | None:
    """An OpenStack object id (a UUID in practice; any ASCII token of letters, digits and
    ._:- accepted): ids are copied into the drive's JSON, so nothing else gets through."""
    if value is None:
        return None
    if not isinstance(value, str) or not _IDENT_RE.fullmatch(value):
        errors.add(path, value, "is not an id (letters, digits and ._:- only, at most 255)")
        return None
    return value


def as_text(value: Any, path: str, errors: ErrorCollector) -> str | None:
    """A display string (instance name, availability zone): at most 255 printable
    characters, as nova stores them. It reaches only the drive's JSON (escaped there)."""
    text = as_str(value, path, errors)
    if text is not None and (len(text) > 255 or not text.isprintable()):
        errors.add(path, value, "must be at most 255 printable characters")
        return None
    return text


def as_ip(value: Any, path: str, errors: ErrorCollector) -> IPAddress | None:
    if value is None:
        return None
    try:
        return parse_ip(value)
    except ValueError as exc:
        errors.add(path, value, str(exc))
        return None


def as_network(value: Any, path: str, errors: ErrorCollector) -> IPNetwork | None:
    if value is None:
        return None
    try:
        return parse_network(value)
    except ValueError as exc:
        errors.add(path, value, str(exc))
        return None


def as_mac(value: Any, path: str, errors: ErrorCollector) -> MacAddress | None:
    if value is None:
        return None
    if not isinstance(value, str):
        errors.add(path, value, "is not a MAC address")
        return None
    try:
        return MacAddress.parse(value)
    except ValueError as exc:
        errors.add(path, value, str(exc))
        return None


def as_uuid(value: Any, path: str, errors: ErrorCollector) -> uuid.UUID | None:
    if value is None:
        return None
    if not isinstance(value, str):
        errors.add(path, value, "is not a UUID")
        return None
    try:
        return parse_uuid(value)
    except ValueError as exc:
        errors.add(path, value, str(exc))
        return None


def as_int(value: Any, path: str, errors: ErrorCollector, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors.add(path, value, "is not an integer")
        return None
    if not lo <= value <= hi:
        errors.add(path, value, f"is out of range {lo}..{hi}")
        return None
    return value


def as_bool(value: Any, path: str, errors: ErrorCollector) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        errors.add(path, value, "is not a boolean (true/false)")
        return None
    return value


def as_str_map(value: Any, path: str, errors: ErrorCollector) -> dict[str, str]:
    """A JSON object of string values (nova system metadata, image properties)."""
    obj = as_obj(value, path, errors)
    if obj is None:
        return {}
    out: dict[str, str] = {}
    for k, v in obj.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, int | float):
            out[k] = str(v)
        elif k.startswith("ports_pattern") and isinstance(v, Mapping):
            out[k] = repr(dict(v))  # the seed shows the pattern as a nested mapping
        else:
            errors.add(f"{path}.{k}", v, "must be a string")
    return out


__all__ = ["MISSING"]
