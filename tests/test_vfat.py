"""The in-process FAT16 writer (netinject.vfat) against real peers: byte for byte the
image mkfs.fat + mtools make, and read back by fsck.fat, blkid, mtools, the guest agent's
own reader and discovery."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CASES
from helpers.drive import blkid, vfat_files
from netinject import drive, vfat
from netinject.bench.drive import synthetic_instance
from netinject.guest import contract, discovery
from netinject.guest.readers import FatReader
from netinject.render import Options
from netinject.sources.neutron import parse_document

MIB = 1024 * 1024


def _contents(doc: object) -> tuple[drive.DriveContents, int]:
    instance = parse_document(doc).instance
    return drive.contents(instance, Options()), drive.volume_id(instance.uuid)


def _both(data: drive.DriveContents, vol: int, where: Path) -> tuple[bytes, bytes]:
    """(netinject.vfat's image, mkfs.fat + mmd + mcopy's image) of the same contents."""
    ours, tools = where / "ours.img", where / "tools.img"
    drive.build_vfat(data, ours, vol)
    drive._build_vfat_tools(data, tools, vol, None)
    return ours.read_bytes(), tools.read_bytes()


def _fsck(image: Path) -> None:
    """fsck.fat -n: exit 0 and nothing to report but its banner and the summary line."""
    done = subprocess.run(["fsck.fat", "-n", str(image)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(done.stdout.splitlines()) == 2, done.stdout


CASE_DOCS = sorted(p.parent.name for p in CASES.glob("*/instance.json"))


@pytest.mark.parametrize("case", CASE_DOCS)
def test_every_case_is_byte_identical_to_mkfs_fat_and_mtools(case: str, tmp_path: Path) -> None:
    try:
        data, vol = _contents(json.loads((CASES / case / "instance.json").read_text()))
    except Exception:  # a case of bad input: nothing to build
        pytest.skip("not a valid instance")
    ours, tools = _both(data, vol, tmp_path)
    assert ours == tools


@pytest.mark.parametrize("nics", [1, 8, 64])
def test_many_nics_are_byte_identical_to_mkfs_fat_and_mtools(nics: int, tmp_path: Path) -> None:
    """64 NICs: directories grow past one cluster (mtools allocates the growth after the
    directory's files), short names run to ~10 and beyond, and mtools' name-hash bitmap
    skips numbers (``10-NE~55`` -> ``~56``)."""
    ours, tools = _both(*_contents(synthetic_instance(nics)), tmp_path)
    assert ours == tools


@pytest.mark.parametrize("mib", [16, 64, 65, 128, 129, 300, 511])
def test_geometry_is_mkfs_fats(mib: int, tmp_path: Path) -> None:
    """Boot sector, FATs and root directory of an empty image, for sizes where mkfs.fat
    picks 2, 4, 8 and 16 sectors per cluster and both CHS schemes."""
    geo = vfat.geometry(mib * MIB)
    assert geo is not None
    vfat.write_image(tmp_path / "ours", {}, geo, 0x1234ABCD, "config-2", drive.FIXED_EPOCH)
    subprocess.run(["mkfs.fat", "-C", "--invariant", "-i", "1234abcd", "-n", "config-2",
                    str(tmp_path / "mkfs"), str(mib * 1024)], check=True, capture_output=True)
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "mkfs").read_bytes()


def test_sizes_mkfs_fat_makes_fat12_or_fat32_are_left_to_it() -> None:
    assert vfat.geometry(512 * MIB) is None  # FAT32 from here on
    assert vfat.geometry(8 * MIB) is None
    assert vfat.geometry(64 * MIB + 512) is None  # not whole KiB


def test_default_drive_reads_back_with_every_peer(tmp_path: Path) -> None:
    """fsck.fat clean; blkid: vfat FAT16, label config-2 (root entry and boot sector
    alike), the UUID the agent derives from the serial; mtools copies every file out; the
    agent's discovery finds the drive by its label and verifies the payload."""
    data, vol = _contents(synthetic_instance(8))
    img = tmp_path / "c.img"
    drive.build_vfat(data, img, vol)
    assert img.stat().st_size == drive.DEFAULT_SIZE
    assert img.stat().st_blocks * 512 < 1 * MIB  # sparse: only what is used is written
    _fsck(img)
    ids = blkid(img)
    assert (ids["TYPE"], ids["VERSION"], ids["LABEL"]) == ("vfat", "FAT16", "config-2")
    assert ids.get("LABEL_FATBOOT", "config-2") == "config-2"
    assert ids["UUID"] == contract.fat_uuid(f"{vol:08x}")
    raw = img.read_bytes()
    assert raw[43:54] == b"config-2   "  # the boot sector's label, lower case as nova's
    geo = vfat.geometry(drive.DEFAULT_SIZE)
    assert geo is not None
    assert raw[geo.root_offset:geo.root_offset + 12] == b"config-2   \x08"  # root entry
    assert vfat_files(img, tmp_path / "x") == {str(p): b for p, b in data.files.items()}
    found = discovery.probe_label(str(img))
    assert found is not None
    try:
        assert (found.kind, found.label, found.volume_id) == ("vfat", "config-2", f"{vol:08x}")
        manifest = contract.verify(discovery.read_payload(found))
    finally:
        found.close()
    assert manifest.uuid == str(parse_document(synthetic_instance(8)).instance.uuid)


def test_names_carry_long_names_or_nt_case_flags(tmp_path: Path) -> None:
    """What Linux's vfat and the agent read: a lower-case 8.3 name is a short entry with
    the NT lower-case flag(s) and no long name; anything else gets a long name."""
    files = {PurePosixPath("d", n): b"x" for n in (
        "hostname", "resolv.conf", "UPPER.TXT", "lower.TXT", "Mixed", "a.b.c", "x y")}
    geo = vfat.geometry(drive.DEFAULT_SIZE)
    assert geo is not None
    img = tmp_path / "c.img"
    vfat.write_image(img, files, geo, 1, "config-2", drive.FIXED_EPOCH)
    raw = img.read_bytes()
    entries = [raw[geo.data_offset + i:geo.data_offset + i + 32] for i in range(64, 2048, 32)]
    shorts = {e[:11]: (e[12], entries[i - 1][11] == 0x0F if i else False)
              for i, e in enumerate(entries) if e[0] and e[11] != 0x0F}
    assert shorts == {  # short name: (NT case flags, preceded by a long-name entry)
        b"HOSTNAME   ": (0x08, False), b"RESOLV~1CON": (0, True),
        b"UPPER   TXT": (0, False), b"LOWER   TXT": (0x08, False), b"MIXED      ": (0, True),
        b"AB~1    C  ": (0, True), b"XY~1       ": (0, True)}
    fd = os.open(img, os.O_RDONLY)
    try:
        assert FatReader(fd).read_dir_files("d", 1 << 20) == {n.name: b"x" for n in files}
    finally:
        os.close(fd)


def test_timestamps_are_the_fixed_epoch_in_utc(tmp_path: Path) -> None:
    data, vol = _contents(synthetic_instance(1))
    img = tmp_path / "c.img"
    drive.build_vfat(data, img, vol)
    out = subprocess.run(["mdir", "-/", "-i", str(img), "::/"], capture_output=True,
                         text=True, check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}
                         ).stdout
    stamps = re.findall(r"\d{4}-\d\d-\d\d +\d+:\d\d", out)
    assert len(stamps) >= len(data.files)
    assert set(stamps) == {"2010-01-01   0:00"}


def test_too_much_for_the_image_is_a_build_error(tmp_path: Path) -> None:
    geo = vfat.geometry(16 * MIB)
    assert geo is not None
    with pytest.raises(vfat.FatError, match="do not fit"):
        vfat.write_image(tmp_path / "c.img", {PurePosixPath("a/big"): bytes(17 * MIB)}, geo,
                         1, "config-2", drive.FIXED_EPOCH)
    with pytest.raises(vfat.FatError, match="unique regardless of case"):
        vfat.write_image(tmp_path / "d.img", {PurePosixPath("a/x"): b"", PurePosixPath("a/X"):
                                              b""}, geo, 1, "config-2", drive.FIXED_EPOCH)
    with pytest.raises(vfat.FatError, match="root directory"):
        vfat.write_image(tmp_path / "e.img", {PurePosixPath(f"f{i}"): b"" for i in range(600)},
                         geo, 1, "config-2", drive.FIXED_EPOCH)


def test_forced_fat_sizes_still_use_the_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """fat=(bits, KiB) is built by mkfs.fat + mtools: a failing tool is a DriveBuildError
    naming it (the default path starts no tool at all)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mmd").write_text("#!/bin/sh\necho 'disk full' >&2\nexit 1\n")
    (bindir / "mmd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    data, vol = _contents(synthetic_instance(1))
    with pytest.raises(drive.DriveBuildError, match=r"mmd failed \(exit 1\): disk full"):
        drive.build_vfat(data, tmp_path / "c.img", vol, fat=(12, 4096))
    drive.build_vfat(data, tmp_path / "d.img", vol)  # in-process: no mmd needed
    assert blkid(tmp_path / "d.img")["VERSION"] == "FAT16"


# Names mtools writes the same way (no '~' and none of the characters a short name cannot
# hold, where mtools 4.0.32 drops the long name): the trees must come out identical.
RESERVED = {"CON", "AUX", "PRN", "NUL", *(f"{d}{n}" for d in ("COM", "LPT") for n in range(1, 5))}
TAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_. ",
               min_size=1, max_size=30).filter(
    lambda n: n.strip(". ") != "" and n[0] != " " and n[-1] not in ". "
    and n.split(".")[0].upper() not in RESERVED)  # mcopy fails on DOS device names
# (within the BMP: mtools reads a surrogate pair as two '_'; the agent's reader does not,
# see test_names_beyond_the_bmp_read_back)
HOSTILE = st.text(alphabet=st.characters(codec="utf-8", min_codepoint=0x20,
                                          max_codepoint=0xFFFE,
                                          exclude_characters='"*/:<>?\\|'),
                  min_size=1, max_size=40).filter(
    lambda n: n.strip(". ") != "" and n[0] != " " and n[-1] not in ". ")
SIZES = st.sampled_from([0, 1, 100, 2047, 2048, 2049, 9000])
DIRS = st.sampled_from(["a", "b/c", "netinject", "Mixed Dir/sub", "openstack/latest"])


@st.composite
def trees(draw: st.DrawFn, names: st.SearchStrategy[str]) -> dict[PurePosixPath, bytes]:
    files: dict[PurePosixPath, bytes] = {}
    seen: set[str] = set()
    for _ in range(draw(st.integers(1, 60))):
        path = PurePosixPath(draw(DIRS), draw(names))
        folded = {str(p).lower() for p in (path, *path.parents)}
        if str(path).lower() in seen or folded & {str(p).lower() for p in files}:
            continue
        seen |= folded
        files[path] = bytes([len(files) % 251]) * draw(SIZES)
    return files


@pytest.mark.parametrize("shard", [1, 2])  # 2 x 20 examples (two workers can share them)
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(files=trees(TAME), serial=st.integers(0, 0xFFFFFFFF))
def test_random_trees_are_byte_identical_to_mkfs_fat_and_mtools(
        shard: int, files: dict[PurePosixPath, bytes], serial: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ours, tools = _both(drive.DriveContents(files, True), serial, Path(tmp))
        assert ours == tools


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(files=trees(HOSTILE))
def test_hostile_names_read_back_with_every_reader(files: dict[PurePosixPath, bytes]) -> None:
    """Any name (non-ASCII, characters a short name cannot hold, '~', mixed case): the
    image is fsck-clean, and mtools and the agent's reader both give back every file by
    its own name."""
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "c.img"
        drive.build_vfat(drive.DriveContents(files, True), img, 7)
        _fsck(img)
        assert vfat_files(img, Path(tmp) / "x") == {str(p): b for p, b in files.items()}
        fd = os.open(img, os.O_RDONLY)
        try:
            reader = FatReader(fd)
            back = {PurePosixPath(d, n): b for d in {str(p.parent) for p in files}
                    for n, b in reader.read_dir_files(d, 1 << 20).items()}
        finally:
            os.close(fd)
        assert back == files


def test_names_beyond_the_bmp_read_back(tmp_path: Path) -> None:
    """UTF-16 surrogate pairs in the long name, and a DOS device name ("nul" -> NUL~1)."""
    geo = vfat.geometry(drive.DEFAULT_SIZE)
    assert geo is not None
    files = {PurePosixPath("d", n): n.encode() for n in ("\U0001f600.conf", "nul", "a\U00010000")}
    vfat.write_image(tmp_path / "c.img", files, geo, 1, "config-2", drive.FIXED_EPOCH)
    _fsck(tmp_path / "c.img")
    fd = os.open(tmp_path / "c.img", os.O_RDONLY)
    try:
        assert FatReader(fd).read_dir_files("d", 1 << 20) == {p.name: b for p, b in files.items()}
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["a:b", "star*", "\uffff", "tab\there", "dot.", "space ", " lead",
                                  "back\\slash", "q?", 'say"'])
def test_names_vfat_cannot_hold_are_refused(name: str, tmp_path: Path) -> None:
    """Refused, never renamed (mtools would rename them, and the agent looks files up by
    name); Linux's vfat refuses to create them too."""
    geo = vfat.geometry(drive.DEFAULT_SIZE)
    assert geo is not None
    with pytest.raises(vfat.FatError, match="cannot write a file named"):
        vfat.write_image(tmp_path / "c.img", {PurePosixPath("d", name): b"x"}, geo, 1,
                         "config-2", drive.FIXED_EPOCH)
    assert not (tmp_path / "c.img").exists()


def test_fat16_entry_layout() -> None:
    """A directory entry as mtools writes it: every time field from one stamp."""
    raw = vfat._entry(b"HOSTNAME   ", vfat.ATTR_ARCHIVE, 0x08, 9, 6, (0, 0x3C21))
    assert struct.unpack("<11sBBBHHHHHHHI", raw) == (
        b"HOSTNAME   ", 0x20, 0x08, 0, 0, 0x3C21, 0x3C21, 0, 0, 0x3C21, 9, 6)
