"""ISO9660 drives as nova and others build them (genisoimage), and an independent map of
their Rock Ridge (SUSP) entries and Joliet descriptor, for tests that damage them at
exact places.

The map is the test's own reading of ECMA-119 and SUSP 1.12, written apart from the
agent's reader (src/netinject/guest/readers.py), for drives of 2048-byte blocks.
"""

from __future__ import annotations

import json
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOCK = 2048

# nova/virt/configdrive.py, _make_iso9660 (Zed).
NOVA_GENISOIMAGE = ["-ldots", "-allow-lowercase", "-allow-multidot", "-l", "-publisher",
                    "OpenStack Nova 26.2.2", "-quiet", "-J", "-r", "-V", "config-2"]


def nova_tree(tmp: Path, vendor2: Any) -> Path:
    """The files a stock nova writes (the ones the agent reads), with vendor_data2.json."""
    tree = tmp / "tree"
    for version in ("2013-10-17", "latest"):
        d = tree / "openstack" / version
        d.mkdir(parents=True)
        (d / "meta_data.json").write_text('{"uuid": "x"}')
        (d / "vendor_data.json").write_text("{}")
        if vendor2 is not None:
            (d / "vendor_data2.json").write_bytes(
                vendor2 if isinstance(vendor2, bytes) else json.dumps(vendor2).encode())
    return tree


def genisoimage(out: Path, tree: Path, options: list[str]) -> Path:
    subprocess.run(["genisoimage", "-o", str(out), *options, str(tree)], check=True,
                   capture_output=True)
    return out


@dataclass
class Record:
    """A directory record of the primary tree: where it is and what it says."""

    offset: int  # of the record in the image
    name: bytes  # its ISO9660 identifier
    extent: int
    size: int
    is_dir: bool
    su: int  # where its system use area starts (after the SP skip bytes)


@dataclass
class Entry:
    """A SUSP entry: where it is (in a record or a continuation area), its signature and
    length."""

    offset: int
    sig: bytes
    length: int


def _records(data: bytes, extent: int, size: int) -> list[Record]:
    out = []
    start = extent * BLOCK
    i = 0
    while i < size:
        length = data[start + i]
        if length == 0:
            i = (i // BLOCK + 1) * BLOCK
            continue
        at = start + i
        nlen = data[at + 32]
        su = 33 + nlen + ((33 + nlen) & 1)
        out.append(Record(at, data[at + 33:at + 33 + nlen],
                          struct.unpack_from("<I", data, at + 2)[0],
                          struct.unpack_from("<I", data, at + 10)[0],
                          bool(data[at + 25] & 2), at + su))
        i += length
    return out


def primary_root(data: bytes) -> tuple[int, int]:
    pvd = 16 * BLOCK
    return (struct.unpack_from("<I", data, pvd + 156 + 2)[0],
            struct.unpack_from("<I", data, pvd + 156 + 10)[0])


def records(data: bytes) -> list[Record]:
    """Every record of the primary tree ('.' and '..' included), directories first
    visited first (no skip bytes assumed: genisoimage writes none)."""
    out = []
    todo = [primary_root(data)]
    seen = set()
    while todo:
        extent, size = todo.pop(0)
        if extent in seen:
            continue
        seen.add(extent)
        for rec in _records(data, extent, size):
            out.append(rec)
            if rec.is_dir and rec.name not in (b"\x00", b"\x01"):
                todo.append((rec.extent, rec.size))
    return out


def entries(data: bytes, rec: Record) -> list[Entry]:
    """The SUSP entries of a record, continuation areas included (in order)."""
    out = []
    end = rec.offset + data[rec.offset]
    at = rec.su
    for _ in range(16):
        ce = None
        while end - at > 2 and data[at + 2] >= 4:
            sig, length = data[at:at + 2], data[at + 2]
            out.append(Entry(at, sig, length))
            if sig == b"CE":
                ce = (struct.unpack_from("<I", data, at + 4)[0],
                      struct.unpack_from("<I", data, at + 12)[0],
                      struct.unpack_from("<I", data, at + 20)[0])
            at += length
        if ce is None:
            return out
        at = ce[0] * BLOCK + ce[1]
        end = at + ce[2]
    return out


def record(data: bytes, name: bytes) -> Record:
    """The first record of the primary tree whose ISO9660 identifier starts with name."""
    return next(r for r in records(data) if r.name.startswith(name))


def entry(data: bytes, rec: Record, sig: bytes) -> Entry:
    return next(e for e in entries(data, rec) if e.sig == sig)


def joliet_descriptor(data: bytes) -> int | None:
    """The offset of the Joliet supplementary volume descriptor, if there is one."""
    for sector in range(17, 32):
        vd = data[sector * BLOCK:(sector + 1) * BLOCK]
        if vd[1:6] != b"CD001" or vd[0] == 255:
            return None
        if vd[0] == 2 and vd[88:91] in (b"%/@", b"%/C", b"%/E"):
            return sector * BLOCK
    return None


def ce_bytes(extent: int, offset: int, size: int) -> bytes:
    """A CE entry (SUSP 5.1): both-endian extent, offset and size."""
    def both(n: int) -> bytes:
        return struct.pack("<I", n) + struct.pack(">I", n)
    return b"CE\x1c\x01" + both(extent) + both(offset) + both(size)
