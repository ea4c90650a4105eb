"""The agent's ISO9660 reader names files as Linux's isofs does: Rock Ridge (NM) when the
primary root's '.' carries ER, else Joliet, else the ISO9660 names. Every way
genisoimage builds a config-2 drive (nova's options and the plainer ones other tools
use) reads to exactly the payload, and damaged Rock Ridge and Joliet structures are
refused cleanly (AgentError) instead of read or looped on.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers import iso
from helpers.guest import (
    AGENT,
    GUEST_PYTHON,
    agent_log,
    instance_doc,
    make_drive,
    make_guest,
    run_agent,
)
from netinject.guest import contract
from netinject.openstack.document import payload
from netinject.sources.neutron import parse_document

PLAIN = ["-quiet", "-V", "config-2"]
BUILDS = [
    ("J-r", [*PLAIN, "-J", "-r"], "rock"),
    ("r", [*PLAIN, "-r"], "rock"),
    ("J", [*PLAIN, "-J"], "joliet"),
    ("nova", iso.NOVA_GENISOIMAGE, "rock"),
]
VENDOR = "vendor_data2.json"


def _answer() -> dict[str, Any]:
    return {"static": {}, "netinject": payload(parse_document(instance_doc()).instance)}


def _expected(answer: dict[str, Any]) -> dict[str, bytes]:
    """The payload files exactly as the answer carries them (name -> bytes)."""
    ours = answer["netinject"]
    return {"manifest": ours["manifest"].encode(),
            **{name: text.encode() for name, text in ours["files"].items()}}


def _build(tmp: Path, options: list[str]) -> tuple[Path, dict[str, bytes]]:
    answer = _answer()
    img = iso.genisoimage(tmp / "c.iso", iso.nova_tree(tmp, answer), options)
    return img, _expected(answer)


# The shipped agent's reader, run by GUEST_PYTHON (so under every Python the agent is
# tested on): the payload as hex, or the AgentError it raised, as one JSON line.
READ = """\
import json, os, sys
sys.path.insert(0, %r)
import netinject_guest as a
img, what = %r, %r
try:
    if what == "files":
        found = a.probe_label(img)
        assert found is not None
        try:
            out = {"files": {k: v.hex() for k, v in a.read_payload(found).items()}}
        finally:
            found.close()
    else:
        fd = os.open(img, os.O_RDONLY)
        try:
            r = a.IsoReader(fd)
        finally:
            os.close(fd)
        out = {"naming": "joliet" if r.joliet else "rock" if r.rock else "iso9660"}
except a.AgentError as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(out))
"""


def _agent(img: Path, what: str) -> Any:
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", "-c",
                           READ % (str(AGENT.parent), str(img), what)],
                          capture_output=True, text=True, check=True, timeout=60)
    out = json.loads(done.stdout)
    if "error" in out:
        # (NoPayload and AgentError are the contract's; a subclass of AgentError only)
        raise getattr(contract, out["error"], contract.AgentError)(out["message"])
    return out[what]


def _read(img: Path) -> dict[str, bytes]:
    return {k: bytes.fromhex(v) for k, v in _agent(img, "files").items()}


def _naming(img: Path) -> str:
    return str(_agent(img, "naming"))


def _patch(img: Path, at: int, data: bytes) -> None:
    raw = bytearray(img.read_bytes())
    raw[at:at + len(data)] = data
    img.write_bytes(bytes(raw))


# -- what genisoimage builds ---------------------------------------------------------------


@pytest.mark.parametrize(("options", "naming"), [b[1:] for b in BUILDS],
                         ids=[b[0] for b in BUILDS])
def test_every_genisoimage_build_reads_to_exactly_the_payload(
        options: list[str], naming: str, tmp_path: Path) -> None:
    """Without nova's relaxed-name options the primary names are 8.3 (VENDOR_D.JSO): the
    file is found through Rock Ridge or Joliet, as the kernel finds it."""
    img, expected = _build(tmp_path, options)
    assert _naming(img) == naming
    assert _read(img) == expected
    # The whole boot service on a guest-shaped tree, and the drive's label in its log.
    root = make_guest(tmp_path / "root", instance_doc(), img)
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    log = agent_log(root)
    result = contract.parse_result(log)
    assert result is not None, log
    assert result["outcome"] == "installed", log
    assert "/dev/vdb (iso9660, label config-2)\n" in log, log


def test_netinjects_own_iso_is_read_through_rock_ridge_and_logs_label_and_volume(
        tmp_path: Path) -> None:
    from netinject.drive import volume_id
    from netinject.model import parse_uuid

    doc = instance_doc()
    img = make_drive(tmp_path / "c.iso", doc, "iso9660")
    assert _naming(img) == "rock"
    root = make_guest(tmp_path / "root", doc, img)
    assert run_agent(root).returncode == 0
    vol = f"{volume_id(parse_uuid(doc['instance']['uuid'])):08x}"
    assert f"/dev/vdb (iso9660, label config-2, volume {vol})\n" in \
        agent_log(root)


# -- which names: the kernel's order -------------------------------------------------------


def _rename(img: Path, old: bytes, new: bytes) -> int:
    """Every occurrence of ``old`` in the image replaced (same length); how many."""
    raw = img.read_bytes()
    assert len(old) == len(new)
    img.write_bytes(raw.replace(old, new))
    return raw.count(old)


def _drop_er(img: Path) -> None:
    data = img.read_bytes()
    root = iso.records(data)[0]
    _patch(img, iso.entry(data, root, b"ER").offset, b"XX")


def test_rock_ridge_names_win_over_joliet_when_the_root_has_er(tmp_path: Path) -> None:
    img, expected = _build(tmp_path, [*PLAIN, "-J", "-r"])
    # Joliet's names of the file (UCS-2 big-endian) made different: not looked at.
    assert _rename(img, VENDOR.encode("utf-16-be"), "vendor_data2.jsoX".encode("utf-16-be")) == 2
    assert _read(img) == expected
    # Without ER the kernel does not trust Rock Ridge over Joliet: Joliet's names apply.
    _drop_er(img)
    assert _naming(img) == "joliet"
    with pytest.raises(contract.NoPayload):
        _read(img)


def test_joliet_names_apply_when_rock_ridge_is_not_confirmed(tmp_path: Path) -> None:
    img, expected = _build(tmp_path, [*PLAIN, "-J", "-r"])
    assert _rename(img, b"NM\x16\x01\x00" + VENDOR.encode(),
                   b"NM\x16\x01\x00vendor_data2.jsoX") == 2
    with pytest.raises(contract.NoPayload):
        _read(img)  # Rock Ridge's (changed) names: the file is not there
    _drop_er(img)
    assert _read(img) == expected


def test_an_empty_rock_ridge_root_falls_back_to_joliet(tmp_path: Path) -> None:
    """The kernel's fix for discs with Rock Ridge and an empty primary root but a good
    Joliet tree."""
    img, expected = _build(tmp_path, [*PLAIN, "-J", "-r"])
    data = img.read_bytes()
    dotdot = iso.records(data)[1]
    end = dotdot.offset + data[dotdot.offset]
    extent, _size = iso.primary_root(data)
    _patch(img, end, bytes((extent + 1) * iso.BLOCK - end))
    assert _naming(img) == "joliet"
    assert _read(img) == expected


@pytest.mark.parametrize(("skip", "reads"), [(5, True), (200, False)])
def test_sp_skip_bytes_are_skipped_in_every_other_record(skip: int, reads: bool,
                                                         tmp_path: Path) -> None:
    """genisoimage starts each record's system use area with a 5-byte RR entry: skipping
    exactly it still finds NM; skipping past the area leaves only the 8.3 names."""
    img, expected = _build(tmp_path, [*PLAIN, "-r"])
    data = img.read_bytes()
    sp = iso.entry(data, iso.records(data)[0], b"SP")
    _patch(img, sp.offset + 6, bytes([skip]))
    if reads:
        assert _read(img) == expected
    else:
        with pytest.raises(contract.NoPayload):
            _read(img)


# -- damaged Rock Ridge and Joliet: refused, not read or looped on -------------------------


def _rock(tmp: Path) -> tuple[Path, bytes]:
    img, _expected = _build(tmp, [*PLAIN, "-J", "-r"])
    return img, img.read_bytes()


def _refused(img: Path, message: str) -> None:
    with pytest.raises(contract.AgentError, match=message) as err:
        _read(img)
    assert not isinstance(err.value, contract.NoPayload)


def test_a_continuation_area_that_points_at_itself_is_refused(tmp_path: Path) -> None:
    img, data = _rock(tmp_path)
    ce = iso.entry(data, iso.records(data)[0], b"CE")
    _patch(img, ce.offset, iso.ce_bytes(ce.offset // iso.BLOCK, ce.offset % iso.BLOCK, 28))
    _refused(img, r"more than 8 Rock Ridge continuation areas for one record \(a loop\?\)")


@pytest.mark.parametrize(("offset", "size"), [(0, 2049), (0xFFFFFFFF, 16), (2045, 16),
                                              (0, 0xFFFFFFFF)])
def test_a_continuation_area_out_of_its_block_is_refused(offset: int, size: int,
                                                         tmp_path: Path) -> None:
    img, data = _rock(tmp_path)
    ce = iso.entry(data, iso.records(data)[0], b"CE")
    extent = struct.unpack_from("<I", data, ce.offset + 4)[0]
    _patch(img, ce.offset, iso.ce_bytes(extent, offset, size))
    _refused(img, "Rock Ridge continuation area out of its block")


def test_an_entry_longer_than_its_area_is_refused(tmp_path: Path) -> None:
    img, data = _rock(tmp_path)
    nm = iso.entry(data, iso.record(data, b"OPENSTAC"), b"NM")
    _patch(img, nm.offset + 2, b"\xff")
    _refused(img, "Rock Ridge entry b'NM' runs past its area")


def test_a_name_continued_past_255_bytes_is_refused(tmp_path: Path) -> None:
    """NM entries with the CONTINUE flag, in a continuation area the record's CE points
    at (a block added at the end of the image), adding up to more than 255 bytes."""
    img, data = _rock(tmp_path)
    rec = iso.record(data, b"OPENSTAC")
    px = iso.entry(data, rec, b"PX")  # 36 bytes: a CE (28) and an 8-byte filler
    area_block = len(data) // iso.BLOCK
    nm = b"NM\xcd\x01\x01" + b"n" * 200  # 205 bytes, CONTINUE
    area = nm + nm
    _patch(img, px.offset, iso.ce_bytes(area_block, 0, len(area)) + b"ZZ\x08\x01" + bytes(4))
    img.write_bytes(img.read_bytes() + area + bytes(iso.BLOCK - len(area)))
    _refused(img, "Rock Ridge name longer than 255 bytes")


def test_a_huge_directory_is_refused_before_it_is_read(tmp_path: Path) -> None:
    img, data = _rock(tmp_path)
    rec = iso.record(data, b"LATEST")
    _patch(img, rec.offset + 10, struct.pack("<I", 0x7FFFFFFF))
    _refused(img, r"ISO9660 directory too large \(2147483647 bytes\)")


def test_a_joliet_record_with_a_name_past_its_end_is_refused(tmp_path: Path) -> None:
    img, _expected = _build(tmp_path, [*PLAIN, "-J"])
    data = img.read_bytes()
    svd = iso.joliet_descriptor(data)
    assert svd is not None
    root = struct.unpack_from("<I", data, svd + 156 + 2)[0] * iso.BLOCK
    first = root + data[root] + data[root + data[root]]  # after '.' and '..'
    _patch(img, first + 32, b"\xff")  # name length 255 in a shorter record
    _refused(img, "bad ISO9660 directory record")


def test_a_huge_joliet_root_is_refused(tmp_path: Path) -> None:
    img, _expected = _build(tmp_path, [*PLAIN, "-J"])
    svd = iso.joliet_descriptor(img.read_bytes())
    assert svd is not None
    _patch(img, svd + 156 + 10, struct.pack("<I", 0xFFFFFFFF))
    _refused(img, r"ISO9660 directory too large \(4294967295 bytes\)")


def test_the_fuzz_suites_rock_ridge_damage_hits_the_structures(tmp_path: Path) -> None:
    """The fuzz suite's Rock Ridge/Joliet damage (helpers/fuzz.py) changes the SUSP
    entries or the Joliet descriptor, not random bytes elsewhere."""
    import random

    from helpers.fuzz import damage_iso_extensions

    _img, data = _rock(tmp_path)
    places = {e.offset + i for rec in iso.records(data) for e in iso.entries(data, rec)
              for i in range(e.length)}
    svd = iso.joliet_descriptor(data)
    assert svd is not None
    places |= set(range(svd, svd + iso.BLOCK))
    rng = random.Random(7)
    hits = 0
    for _ in range(50):
        damaged = damage_iso_extensions(data, rng)
        assert len(damaged) == len(data)
        changed = {i for i in range(len(data)) if data[i] != damaged[i]}
        assert changed <= places
        hits += bool(changed)
    assert hits >= 45  # (a value may be written over an equal one)
