"""A FAT16 image writer for config drives: the image ``mkfs.fat --invariant`` + mtools'
``mmd``/``mcopy`` make, written in one pass without starting a process.

PyPI's FAT writers were measured first and do not fit: pyfatfs (pure Python) takes
~190 ms for an 8-NIC drive, stamps files with the wall clock and writes a label that
``fsck.fat -n`` reports as inconsistent; fatfs-ng (ChaN's FatFs) takes ~160 ms, has no
volume label call, stamps the wall clock and hashes short names (``NET~D2A9``).

What this module writes, for nova's 64 MiB drive and any size up to the 512 MiB where
mkfs.fat switches to FAT32 (``geometry`` returns None outside that range and the caller
uses the tools):

* the boot sector/BPB as dosfstools 4.2's mkfs.fat lays it out (its cluster-size search,
  reserved sectors and root directory aligned to the cluster, CHS geometry, boot code),
  with the volume serial and the label as given (lower case, as nova writes it);
* two identical FATs, FAT16 chains ending in 0xFFFF;
* the root directory: the volume-label entry (mkfs.fat's ``--invariant`` timestamp), then
  the directories;
* directories and files in mtools' order: every directory gets a cluster first (``mmd``),
  then each directory's files in sorted order, one cluster run each (``mcopy``), then the
  clusters a directory grew by while its files were copied; entries carry mtools' short
  names (``NETINJ~1 NMC``, numeric tails), VFAT long names where a short name cannot hold
  the name, and the NT lower-case flags (0x08 base, 0x10 extension) where it can
  (``hostname``, ``latest``), which Linux's vfat and the guest agent's reader honour;
* every timestamp the same (``epoch``, in UTC: no timezone leaks in).

The result is byte-identical to what dosfstools 4.2 and mtools 4.0.32 make from the same
tree (tests hold it to them: every case, 64 NICs, random trees), so nothing the guest
reads changes. Where mtools goes wrong this writer does not follow it: a name with '~'
or a character a short name cannot hold (``;+=[],'``) keeps its long name here (mtools
drops it), and a DOS device name (``nul``) is written as ``NUL~1`` plus its long name
(mcopy fails). Names vfat cannot hold are refused, never renamed: control characters,
``"*/:<>?\\|``, U+FFFF, leading or trailing spaces, a trailing dot, two names differing
only in case.

The output file is sparse: only the boot sector, the used part of each FAT, the root
directory and the used clusters are written.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

SECTOR = 512
NUM_FATS = 2
MEDIA = 0xF8
ATTR_LABEL, ATTR_DIR, ATTR_ARCHIVE, ATTR_LFN = 0x08, 0x10, 0x20, 0x0F
CASE_LOWER_BASE, CASE_LOWER_EXT = 0x08, 0x10  # Windows NT's flags in byte 12
END_OF_CHAIN = 0xFFFF
MKFS_INVARIANT_TIME = 1426325213  # mkfs.fat --invariant stamps the label entry so
MAX_FAT16_BYTES = 512 * 1024 * 1024  # from here on mkfs.fat picks FAT32
_SHORT_ILLEGAL = frozenset(";+=[]',\"*\\<>/?:|")
# Linux vfat's bad characters (with the control characters), and U+FFFF: a long name's
# padding, which readers strip
_LONG_ILLEGAL = frozenset('"*/:<>?\\|\uffff')
_RESERVED = frozenset({"CON", "AUX", "PRN", "NUL", *(f"{d}{n}" for d in ("COM", "LPT")
                                                      for n in range(1, 5))})
_MASK32 = 0xFFFFFFFF
_TAIL = re.compile("~([0-9]*)$")
_BOOT_CODE = (  # mkfs.fat's dummy boot code: prints the message below and waits for a key
    b"\x0e\x1f\xbe\x5b\x7c\xac\x22\xc0\x74\x0b\x56\xb4\x0e\xbb\x07\x00\xcd\x10\x5e\xeb\xf0"
    b"\x32\xe4\xcd\x16\xcd\x19\xeb\xfe"
    b"This is not a bootable disk.  Please insert a bootable floppy and\r\n"
    b"press any key to try again ... \r\n")


class FatError(ValueError):
    """The tree does not fit, or a name cannot be written."""


@dataclass(frozen=True)
class Geometry:
    """A FAT16 layout as mkfs.fat computes it for an image of ``size`` bytes."""

    size: int  # bytes in the image file
    sectors: int  # sectors in the filesystem (rounded down to whole tracks)
    cluster_sectors: int
    reserved: int
    fat_sectors: int
    root_entries: int
    clusters: int
    heads: int
    track_sectors: int

    @property
    def cluster_bytes(self) -> int:
        return self.cluster_sectors * SECTOR

    @property
    def root_offset(self) -> int:
        return (self.reserved + NUM_FATS * self.fat_sectors) * SECTOR

    @property
    def data_offset(self) -> int:
        return self.root_offset + self.root_entries * 32


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _align(sectors: int, cluster: int) -> int:
    return (sectors + cluster - 1) & ~(cluster - 1)


def geometry(size: int) -> Geometry | None:
    """mkfs.fat's (dosfstools 4.2) layout for a file of ``size`` bytes, if it makes FAT16
    of it with the defaults (512-byte sectors, two FATs, 512 root entries, alignment);
    None when it would make FAT12 or FAT32 or the size is not a whole number of KiB."""
    if size % 1024 or not 16 * 1024 * 1024 <= size < MAX_FAT16_BYTES:
        return None
    total = size // SECTOR
    if total <= 524288:  # the SD card CHS recommendation below 256 MiB
        heads = 2 if total <= 32768 else 4 if total <= 65536 else 8 if total <= 262144 else 16
        track = 16 if total <= 4096 else 32
    else:  # LBA-assist translation
        heads = next(h for h in (16, 32, 64, 128, 255) if h == 255 or total <= h * 63 * 1024)
        track = 63
    sectors = total // track * track
    root_sectors = 32  # 512 entries
    cluster = 4
    while cluster <= 128:
        data = sectors - _align(1, cluster) - _align(root_sectors, cluster)
        c12 = 2 * (data * SECTOR + NUM_FATS * 3) // (2 * cluster * SECTOR + NUM_FATS * 3)
        fat12 = _align(_cdiv(((c12 + 2) * 3 + 1) >> 1, SECTOR), cluster)
        c12 = max(0, (data - NUM_FATS * fat12) // cluster)
        if c12 > min(fat12 * 2 * SECTOR // 3, 4084):
            c12 = 0
        c16 = (data * SECTOR + NUM_FATS * 4) // (cluster * SECTOR + NUM_FATS * 2)
        fat16 = _align(_cdiv((c16 + 2) * 2, SECTOR), cluster)
        c16 = max(0, (data - NUM_FATS * fat16) // cluster)
        if c16 > min(fat16 * SECTOR // 2, 65524) or c16 < 4087:
            c16 = 0
        if c12 or c16:
            break
        cluster <<= 1
    else:
        return None
    if c16 <= c12:
        return None  # mkfs.fat would pick FAT12
    return Geometry(size, sectors, cluster, _align(1, cluster), fat16,
                    _align(root_sectors, cluster) * (SECTOR // 32), c16, heads, track)


def _dos_time(epoch: int) -> tuple[int, int]:
    """(time, date) in FAT's packed form, in UTC."""
    t = time.gmtime(epoch)
    if not 1980 <= t.tm_year <= 2107:
        raise FatError(f"{t.tm_year} is outside FAT's years (1980-2107)")
    return ((t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2),
            ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday)


def _entry(short: bytes, attr: int, case: int, cluster: int, size: int,
           stamp: tuple[int, int]) -> bytes:
    """One 32-byte directory entry, every date and time field from ``stamp``."""
    tm, date = stamp
    return struct.pack("<11sBBBHHHHHHHI", short, attr, case, 0, tm, date, date,
                       cluster >> 16, tm, date, cluster & 0xFFFF, size)


# -- names, as mtools 4.0 makes them -------------------------------------------------------


def _translate(part: str, count: int) -> tuple[str, str, int]:
    """mtools' TranslateToDos for one part of a name (at most ``count`` characters):
    (the part upper-cased, its case: '', 'upper' or 'lower' (that of its first letter),
    mangled bits: 1 = needs a long name (mixed case), 2 = needs a numeric tail as well
    (too long, or a character a short name cannot hold, which becomes '_'))."""
    mangled = 3 if len(part) > count else 0
    out, case = [], ""
    for ch in part[:count]:
        if ch in " .":
            mangled |= 3
            continue
        if not " " <= ch <= "~" or ch in _SHORT_ILLEGAL:
            mangled |= 3
            out.append("_")
        elif "a" <= ch <= "z" or "A" <= ch <= "Z":
            this = "lower" if ch.islower() else "upper"
            if case and case != this:
                mangled |= 1
            case = case or this
            out.append(ch.upper())
        else:
            out.append(ch)
    return "".join(out), case, mangled


def _numeric_tail(base: str, bump: bool) -> str:
    """mtools' autorename for an up-to-8-character base: add ``~1`` (in place of the last
    two characters of a full base), or with ``bump`` count up the tail it has (``~9`` ->
    ``~10``, giving up a character when the base is full, as Windows does)."""
    tail = _TAIL.search(base)
    if tail is None:
        return base[:6 if len(base) > 6 else len(base)] + "~1"
    digits = tail.group(1)
    seq, at = int(digits or 0) + bump, tail.start()
    if seq > 999999:
        seq, at = 1, len(base) - 2
    if seq == 10 ** len(digits) and len(base) >= 8:
        at -= 1
    return (base[:at] + f"~{seq}")[:8]


def _lfn_checksum(short: bytes) -> int:
    s = 0
    for b in short:
        s = (((s & 1) << 7) + (s >> 1) + b) & 0xFF
    return s


def _lfn_entries(name: str, short: bytes) -> list[bytes]:
    """The VFAT long-name entries for ``name``, in on-disk order (last part first)."""
    try:
        units = name.encode("utf-16-le")
    except UnicodeEncodeError:
        raise FatError(f"name {name!r} cannot be written as UTF-16") from None
    n = len(units) // 2
    if n > 255:
        raise FatError(f"name {name!r} is longer than 255 characters")
    count = _cdiv(n, 13)
    padded = units + (b"\0\0" if n % 13 else b"") + b"\xff\xff" * (count * 13)
    check = _lfn_checksum(short)
    out = []
    for i in range(count, 0, -1):
        chunk = padded[(i - 1) * 26:i * 26]
        out.append(struct.pack("<B10sBBB12sH4s", i | (0x40 if i == count else 0), chunk[:10],
                               ATTR_LFN, 0, check, chunk[10:22], 0, chunk[22:26]))
    return out


def _dos_name(name: str) -> tuple[str, str, int, bool]:
    """mtools' dos_name: (base, extension, NT case flags, whether a long name is needed)
    for ``name``, before any clash with names already in the directory."""
    stripped = name.lstrip(". ")
    if not stripped:
        raise FatError(f"cannot write a file named {name!r} on FAT")
    mangled = 3 if stripped != name else 0
    dot = stripped.rfind(".")
    base_part, ext_part = (stripped, None) if dot < 0 else (stripped[:dot], stripped[dot + 1:])
    base, base_case, m = _translate(base_part, 8)
    mangled |= m
    ext, ext_case = "", "upper"
    if ext_part is not None:
        ext, ext_case, m = _translate(ext_part, 3)
        mangled |= m
    if mangled & 2:
        base = _numeric_tail(base, bump=False)
    if mangled:
        return base, ext, 0, True
    case = (CASE_LOWER_BASE if base_case == "lower" else 0) | \
           (CASE_LOWER_EXT if ext_case == "lower" else 0)
    shown = (base.lower() if case & CASE_LOWER_BASE else base) + \
        ("." + (ext.lower() if case & CASE_LOWER_EXT else ext) if ext else "")
    # e.g. "a.": the short name alone would lose the name
    return base, ext, (case if shown == name else 0), shown != name


def _name_hash(name: str) -> int:
    """mtools' calcHash (dirCache.c), over the upper-cased name."""
    h = 0
    upper = name.upper()
    for i, ch in enumerate(upper if len(upper) == len(name) else name):
        c = ord(ch)
        h = (((h << 5) | (h >> 27)) & _MASK32) ^ ((c * (c + 2)) & _MASK32) ^ (i * (i + 2))
    h = (h * (h + 2)) & _MASK32
    h ^= (h & 0xFFF) << 12
    return (h ^ ((h & 0xFF000) << 24)) & _MASK32


def _rol(v: int, n: int) -> int:
    return ((v << n) | (v >> (32 - n))) & _MASK32


# -- the tree --------------------------------------------------------------------------------


@dataclass
class _Dir:
    """A directory being filled, with what mtools keeps about it while it adds entries:
    the names already there and its hash bitmaps of them (mtools treats a short name whose
    hash bits are all set as taken, so a hash collision skips a number: ``~55`` -> ``~56``).
    """

    cluster: int  # 0: the root directory
    entries: list[bytes] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)  # clusters after the first
    shorts: set[str] = field(default_factory=set)  # "NETINJ~1.NMC", upper case
    names: set[str] = field(default_factory=set)  # every long and short name, lower case
    on_disk: list[tuple[str | None, str]] = field(default_factory=list)  # (long, short)
    bitmaps: list[int] = field(default_factory=lambda: [0, 0, 0])
    primed: bool = False  # a lookup ran in this directory in the current tool process
    skip: dict[str, str] = field(default_factory=dict)  # taken short name -> a later base
    hashes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def session(self) -> None:
        """A new mtools process opens the directory: its cache is read back from disk."""
        self.bitmaps, self.primed = [0, 0, 0], False
        for long, short in self.on_disk:
            if long is not None:
                self._hash(long)
            self._hash(short)

    def _bits(self, name: str) -> list[tuple[int, int]]:
        bits = self.hashes.get(name)
        if bits is None:
            h = _name_hash(name)
            bits = self.hashes[name] = [(i, 1 << ((x >> 5) % 128 * 32 + x % 32))
                                        for i, x in enumerate((h, _rol(h, 12), _rol(h, 24)))]
        return bits

    def _hash(self, name: str) -> None:
        for i, bit in self._bits(name):
            self.bitmaps[i] |= bit

    def _hashed(self, name: str) -> bool:
        return all(self.bitmaps[i] & bit for i, bit in self._bits(name))

    def special(self, raw: bytes, shown: str) -> None:
        """An entry without a long name that mtools did not write (".", "..", the label)."""
        self.entries.append(raw)
        self.on_disk.append((None, shown))
        self._hash(shown)

    def _free(self, name: str, base: str, ext: str) -> tuple[str, bool]:
        """The short base mtools settles on for ``name`` (bumping the numeric tail while
        the short name clashes) and whether it had to bump. A name really taken stays
        taken, so ``skip`` remembers where each run of taken names ends (the search stays
        linear in a directory of hundreds of ``~N`` names)."""
        bumped, run, long_hashed = False, [], None
        while True:
            short = base + ("." + ext if ext else "")
            if base in _RESERVED or short in self.shorts:
                if base not in _RESERVED:
                    self.primed = True  # a lookup ran (and found the name)
                run.append(short)
                base = self.skip.get(short) or _numeric_tail(base, bump=True)
                bumped = True
                continue
            for taken in run:
                self.skip[taken] = base
            run = []
            if not self.primed:  # the first lookup scans the directory: no hash check
                self.primed = True
                return base, bumped
            if long_hashed is None:
                long_hashed = self._hashed(name)
            if long_hashed or not self._hashed(short):
                return base, bumped
            base, bumped = _numeric_tail(base, bump=True), True  # a hash collision

    def add(self, name: str, attr: int, cluster: int, size: int,
            stamp: tuple[int, int]) -> None:
        if (not name or name != name.strip(" ") or name.endswith(".")
                or any(c in _LONG_ILLEGAL or c < " " for c in name)):
            raise FatError(f"cannot write a file named {name!r} on vfat: no control "
                           "characters nor any of \"*/:<>?\\|, no U+FFFF, no leading or "
                           "trailing space, no trailing dot")
        if name.lower() in self.names:
            raise FatError(f"cannot add {name!r}: names in a FAT directory must be "
                           "unique regardless of case")
        base, ext, case, long = _dos_name(name)
        base, bumped = self._free(name, base, ext)
        if bumped:
            case, long = 0, True
        short = (base.ljust(8) + ext.ljust(3)).encode("ascii")
        if long:
            self.entries.extend(_lfn_entries(name, short))
        self.entries.append(_entry(short, attr, case, cluster, size, stamp))
        shown = base + ("." + ext if ext else "")
        self.shorts.add(shown)
        self.names.update((name.lower(), shown.lower()))
        on_disk = ((base.lower() if case & CASE_LOWER_BASE else base)
                   + ("." + (ext.lower() if case & CASE_LOWER_EXT else ext) if ext else ""))
        self.on_disk.append((name if long else None, on_disk))
        self._hash(name if long else "")
        self._hash(shown)


class _Allocator:
    """Clusters in order, as mtools hands them out on an empty filesystem."""

    def __init__(self, clusters: int) -> None:
        self.next = 2
        self.last = clusters + 1
        self.chains: list[list[int]] = []

    def take(self, count: int) -> list[int]:
        if self.next + count - 1 > self.last:
            raise FatError("the files do not fit in the image")
        run = list(range(self.next, self.next + count))
        self.next += count
        return run


def write_image(out: Path, files: Mapping[PurePosixPath, bytes], geo: Geometry,
                serial: int, label: str, epoch: int) -> None:
    """Create ``out`` (which must not exist) as a FAT16 image of ``geo`` holding
    ``files`` (relative paths), as ``mkfs.fat --invariant -i SERIAL -n LABEL``, one ``mmd``
    of every directory (parents first, then by name) and one ``mcopy -m`` per directory
    of its files (directories by name, files sorted) would make it with every clock at
    ``epoch``. ``label``: up to 11 ASCII characters, kept as given (lower case too).
    Raises FatError when the tree cannot be written, OSError when the file cannot."""
    raw_label = label.encode("ascii")
    if len(raw_label) > 11 or not label or label[0] == " " or any(
            c < 0x20 or chr(c) in '*?.,;:/\\|+=<>[]"' for c in raw_label):
        raise FatError(f"label {label!r} is not a FAT volume label")
    stamp = _dos_time(epoch)
    csize = geo.cluster_bytes
    alloc = _Allocator(geo.clusters)
    root = _Dir(0)
    root.special(_entry(raw_label.ljust(11), ATTR_LABEL, 0, 0, 0,
                        _dos_time(MKFS_INVARIANT_TIME)), label.ljust(11))
    tree = sorted((path.parts, content) for path, content in files.items())
    if any(not p or p[0] == "/" or ".." in p for p, _ in tree):
        raise FatError("file paths on the drive must be relative and stay below its root")
    dirs: dict[tuple[str, ...], _Dir] = {(): root}
    for path in sorted({p[:i] for p, _ in tree for i in range(1, len(p))},
                       key=lambda d: (len(d), "/".join(d))):  # one mmd, parents first
        parent = dirs[path[:-1]]
        cluster = alloc.take(1)[0]
        parent.add(path[-1], ATTR_DIR, cluster, 0, stamp)
        new = dirs[path] = _Dir(cluster)
        new.special(_entry(b".".ljust(11), ATTR_DIR, 0, cluster, 0, stamp), ".")
        new.special(_entry(b"..".ljust(11), ATTR_DIR, 0, parent.cluster, 0, stamp), "..")
    placed: list[tuple[int, bytes]] = []  # (first cluster, bytes from there on)
    by_dir: dict[tuple[str, ...], list[tuple[str, bytes]]] = {}
    for p, content in tree:
        by_dir.setdefault(p[:-1], []).append((p[-1], content))
    # one mcopy (a new process) per directory, in the order of their names
    for path in sorted(by_dir, key=lambda d: "/".join(d) or "."):
        parent = dirs[path]
        parent.session()
        for name, content in by_dir[path]:
            run = alloc.take(_cdiv(len(content), csize)) if content else []
            parent.add(name, ATTR_ARCHIVE, run[0] if run else 0, len(content), stamp)
            if run:
                alloc.chains.append(run)
                placed.append((run[0], content))
        _grow(parent, alloc, csize)  # mtools allocates a directory's growth as it closes it
    subdirs = [d for d in dirs.values() if d.cluster]
    for d in subdirs:  # one that only holds directories may have grown too
        _grow(d, alloc, csize)
    if len(root.entries) > geo.root_entries:
        raise FatError(f"more than {geo.root_entries} entries in the root directory")
    for d in subdirs:
        chain = [d.cluster, *d.extra]
        alloc.chains.append(chain)
        blob = b"".join(d.entries)
        placed += [(c, blob[i * csize:(i + 1) * csize]) for i, c in enumerate(chain)]
    _write(out, geo, serial, raw_label, alloc, b"".join(root.entries), placed)


def _grow(d: _Dir, alloc: _Allocator, csize: int) -> None:
    """Give a subdirectory the clusters its entries need beyond its first."""
    if d.cluster:
        need = _cdiv(len(d.entries) * 32, csize) - 1 - len(d.extra)
        if need > 0:
            d.extra += alloc.take(need)


def _boot_sector(geo: Geometry, serial: int, label: bytes) -> bytes:
    small = geo.sectors if geo.sectors < 65536 else 0
    head = struct.pack("<3s8sHBHBHHBHHHII", b"\xeb\x3c\x90", b"mkfs.fat", SECTOR,
                       geo.cluster_sectors, geo.reserved, NUM_FATS, geo.root_entries, small,
                       MEDIA, geo.fat_sectors, geo.track_sectors, geo.heads, 0,
                       0 if small else geo.sectors)
    ext = struct.pack("<BBBI11s8s", 0x80, 0, 0x29, serial, label.ljust(11), b"FAT16   ")
    return (head + ext + _BOOT_CODE).ljust(510, b"\0") + b"\x55\xaa"


def _write(out: Path, geo: Geometry, serial: int, label: bytes, alloc: _Allocator,
           root: bytes, placed: list[tuple[int, bytes]]) -> None:
    """Create the sparse image: boot sector, both FATs (their used part), the root
    directory and the data area up to the last cluster used; the rest stays a hole."""
    fat = [0] * alloc.next
    fat[0], fat[1] = 0xFF00 | MEDIA, 0xFFFF
    for chain in alloc.chains:
        for a, b in itertools.pairwise(chain):
            fat[a] = b
        fat[chain[-1]] = END_OF_CHAIN
    fat_bytes = struct.pack(f"<{len(fat)}H", *fat)
    data = bytearray((alloc.next - 2) * geo.cluster_bytes)
    for cluster, blob in placed:
        off = (cluster - 2) * geo.cluster_bytes
        data[off:off + len(blob)] = blob
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        os.ftruncate(fd, geo.size)
        for offset, blob in ((0, _boot_sector(geo, serial, label)),
                             (geo.reserved * SECTOR, fat_bytes),
                             ((geo.reserved + geo.fat_sectors) * SECTOR, fat_bytes),
                             (geo.root_offset, root), (geo.data_offset, bytes(data))):
            view = memoryview(blob)
            while view:
                view = view[os.pwrite(fd, view, offset + len(blob) - len(view)):]
    finally:
        os.close(fd)
