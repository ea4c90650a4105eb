"""ports_pattern: the per-instance map Neutron port id -> guest NIC index (``eth<index>``).

The map lives outside the guest, in nova's instance system metadata, so NIC names stay
stable across reboots, hot-plugs and re-renders. Rules:

* an existing entry never changes;
* a port without an entry takes the lowest free index (so a new VM gets 0, 1, ... in
  request order);
* a port that is gone frees its index.

nova's ``instance_system_metadata.value`` is a String(255). A map for many ports does not
fit one value, so it is stored as compact JSON split over ``ports_pattern``,
``ports_pattern_1``, ``ports_pattern_2``, ... each at most 255 characters. Reading accepts
that form and the seed's form, a Python-literal dict ``{'<port id>': '1', ...}`` (or a
JSON object, or an already-decoded mapping).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .errors import ErrorCollector, InvalidInput

KEY = "ports_pattern"
VALUE_MAX = 255
MAX_INDEX = 4095
_KEY_RE = re.compile(r"ports_pattern(?:_([1-9][0-9]{0,3}))?", re.ASCII)


@dataclass(frozen=True)
class PortsPattern:
    """An immutable port id -> NIC index map."""

    entries: Mapping[str, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))

    @classmethod
    def empty(cls) -> PortsPattern:
        return cls({})

    def index_of(self, port_id: str) -> int | None:
        return self.entries.get(port_id)

    def allocate(self, port_ids: Iterable[str]) -> PortsPattern:
        """The pattern for an instance whose ports are now exactly ``port_ids``.

        Kept ports keep their index, removed ports free theirs, and each new port (in the
        given order) takes the lowest index not in use.
        """
        wanted = list(dict.fromkeys(port_ids))
        kept = {p: i for p, i in self.entries.items() if p in wanted}
        used = set(kept.values())
        result = dict(kept)
        nxt = 0
        for port in wanted:
            if port in result:
                continue
            while nxt in used:
                nxt += 1
            result[port] = nxt
            used.add(nxt)
        return PortsPattern(result)

    def without(self, port_id: str) -> PortsPattern:
        return PortsPattern({p: i for p, i in self.entries.items() if p != port_id})

    # -- stored form -------------------------------------------------------------------

    def to_system_metadata(self) -> dict[str, str]:
        """Split the map into system-metadata values of at most 255 characters each.

        Each value is a JSON object on its own, so any one of them can be read (and
        audited) without the others. Entries are ordered by index.
        """
        chunks: list[dict[str, str]] = [{}]
        for port, index in sorted(self.entries.items(), key=lambda kv: (kv[1], kv[0])):
            candidate = {**chunks[-1], port: str(index)}
            if len(_dump(candidate)) > VALUE_MAX:
                chunks.append({port: str(index)})
            else:
                chunks[-1] = candidate
        out: dict[str, str] = {}
        for n, chunk in enumerate(chunks):
            out[KEY if n == 0 else f"{KEY}_{n}"] = _dump(chunk)
        return out

    @classmethod
    def from_system_metadata(cls, sysmeta: Mapping[str, object], path: str = "system_metadata"
                             ) -> PortsPattern:
        """Read every ``ports_pattern*`` key back into one map (either stored form)."""
        errors = ErrorCollector()
        merged: dict[str, int] = {}
        owner: dict[int, str] = {}
        keys = sorted((k for k in sysmeta if _KEY_RE.fullmatch(k)),
                      key=lambda k: int(_KEY_RE.fullmatch(k).group(1) or 0))  # type: ignore[union-attr]
        for key in keys:
            kpath = f"{path}.{key}"
            raw = sysmeta[key]
            decoded = _decode(raw, kpath, errors)
            if decoded is None:
                continue
            for port, idx in decoded.items():
                epath = f"{kpath}[{port!r}]"
                index = _index(idx, epath, errors)
                if index is None:
                    continue
                if port in merged and merged[port] != index:
                    errors.add(epath, idx, f"conflicts with index {merged[port]} given earlier")
                    continue
                if index in owner and owner[index] != port:
                    errors.add(epath, idx, f"is already the index of port {owner[index]!r}")
                    continue
                merged[port] = index
                owner[index] = port
        errors.raise_if_any()
        return cls(merged)


def updated_system_metadata(sysmeta: Mapping[str, str], pattern: PortsPattern
                            ) -> dict[str, str]:
    """``sysmeta`` with every ports_pattern* key replaced by ``pattern``'s stored form."""
    out = {k: v for k, v in sysmeta.items() if not _KEY_RE.fullmatch(k)}
    out.update(pattern.to_system_metadata())
    return out


def _dump(chunk: Mapping[str, str]) -> str:
    return json.dumps(chunk, separators=(",", ":"), sort_keys=False)


def _decode(raw: object, path: str, errors: ErrorCollector) -> dict[str, object] | None:
    if isinstance(raw, Mapping):
        value: object = dict(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except RecursionError:
            # json raises this (not a ValueError) past ~1000 levels: "[" * 1100.
            errors.add(path, raw, "is nested too deeply (want a flat mapping of port id "
                                  "to NIC index)")
            return None
        except ValueError:
            try:
                # The seed's form is a Python literal with single quotes. literal_eval
                # evaluates literals only, never code.
                value = ast.literal_eval(text)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                errors.add(path, raw, "is neither a JSON object nor a Python dict literal")
                return None
    else:
        errors.add(path, raw, "must be a string or an object")
        return None
    if not isinstance(value, dict):
        errors.add(path, raw, "must decode to an object mapping port id to NIC index")
        return None
    bad = [k for k in value if not isinstance(k, str)]
    for k in bad:
        errors.add(f"{path}[{k!r}]", k, "port id must be a string")
    return {k: v for k, v in value.items() if isinstance(k, str)}


def _index(raw: object, path: str, errors: ErrorCollector) -> int | None:
    if isinstance(raw, bool):
        errors.add(path, raw, "is not a NIC index")
        return None
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and re.fullmatch(r"0|[1-9][0-9]{0,4}", raw, re.ASCII):
        value = int(raw)
    else:
        errors.add(path, raw, "is not a NIC index (a non-negative integer)")
        return None
    if not 0 <= value <= MAX_INDEX:
        errors.add(path, raw, f"is out of range 0..{MAX_INDEX}")
        return None
    return value


__all__ = ["KEY", "InvalidInput", "PortsPattern", "updated_system_metadata"]
