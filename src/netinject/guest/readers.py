"""Read-only FAT and ISO9660 readers: just enough to read the netinject payload off a
config drive without mounting it (no kernel vfat module, nothing to unmount)."""

import os
import struct

from .contract import AgentError, NotOnDrive, iso_name


class FatReader:
    """Read-only FAT12/16/32 reader with long file names: just enough to read the
    netinject payload off a config drive without mounting it."""

    WINDOW = 96 * 1024  # root directory + the first data clusters (netinject's payload)

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.window = b""
        self.window_off = 0
        bs = self._read(0, 512)
        (self.bps, self.spc, reserved, nfats, root_entries, total16, _media, fatsz16,
         _spt, _heads, _hidden, total32) = struct.unpack_from("<HBHBHHBHHHII", bs, 11)
        if self.bps not in (512, 1024, 2048, 4096) or self.spc == 0 or nfats == 0:
            raise AgentError("not a FAT filesystem (bad boot sector)")
        fatsz = self.fatsz = fatsz16 or struct.unpack_from("<I", bs, 36)[0]
        total = total16 or total32
        self.fat_off = reserved * self.bps
        root_secs = (root_entries * 32 + self.bps - 1) // self.bps
        self.root_off = (reserved + nfats * fatsz) * self.bps
        self.root_size = root_entries * 32
        self.data_off = self.root_off + root_secs * self.bps
        clusters = (total - (reserved + nfats * fatsz + root_secs)) // self.spc
        self.bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        self.root_cluster = struct.unpack_from("<I", bs, 44)[0] if self.bits == 32 else 0
        self.csize = self.bps * self.spc
        self._fat_sectors: dict[int, bytes] = {}
        # One read for the root directory and the first data clusters, where netinject
        # writes the payload: later reads come from memory (each device read is an
        # emulated I/O round trip in a guest without KVM). The FAT itself is read only
        # for chains longer than one cluster, a sector at a time.
        self.window_off = min(self.root_off, self.data_off)
        self.window = os.pread(self.fd, self.WINDOW, self.window_off)

    def _read(self, off: int, size: int) -> bytes:
        rel = off - self.window_off
        if rel >= 0 and rel + size <= len(self.window):
            return self.window[rel:rel + size]
        data = os.pread(self.fd, size, off)
        if len(data) != size:
            raise AgentError("drive truncated (short read at offset %d)" % off)
        return data

    def _fat_bytes(self, off: int, size: int) -> bytes:
        """``size`` bytes at ``off`` within the first FAT, read a sector at a time."""
        out = b""
        while size > 0:
            sector, within = divmod(off, self.bps)
            if sector >= self.fatsz:
                raise AgentError("FAT entry out of range")
            if sector not in self._fat_sectors:
                self._fat_sectors[sector] = self._read(self.fat_off + sector * self.bps,
                                                       self.bps)
            chunk = self._fat_sectors[sector][within:within + size]
            out += chunk
            off += len(chunk)
            size -= len(chunk)
        return out

    def _next(self, cluster: int) -> int:
        if self.bits == 16:
            return int(struct.unpack("<H", self._fat_bytes(cluster * 2, 2))[0])
        if self.bits == 32:
            return int(struct.unpack("<I", self._fat_bytes(cluster * 4, 4))[0]) & 0x0FFFFFFF
        pair = struct.unpack("<H", self._fat_bytes(cluster + cluster // 2, 2))[0]
        return int(pair >> 4 if cluster & 1 else pair & 0xFFF)

    def _chain(self, cluster: int, limit: int, directory: bool = False) -> bytes:
        """Up to ``limit`` bytes of a cluster chain. A directory stops at the cluster
        holding its end marker, so one that fits a cluster costs no FAT read at all."""
        end = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[self.bits]
        out: list[bytes] = []
        total = 0
        while 2 <= cluster < end:
            data = self._read(self.data_off + (cluster - 2) * self.csize, self.csize)
            out.append(data)
            total += self.csize
            if total >= limit or (directory and any(
                    data[i] == 0 for i in range(0, len(data), 32))):
                break
            cluster = self._next(cluster)
        return b"".join(out)[:limit]

    def _entries(self, cluster: "int | None") -> dict[str, tuple[int, int, bool]]:
        if cluster is None:
            raw = (self._read(self.root_off, self.root_size) if self.bits != 32
                   else self._chain(self.root_cluster, 1 << 23, directory=True))
        else:
            raw = self._chain(cluster, 1 << 23, directory=True)
        entries: dict[str, tuple[int, int, bool]] = {}
        lfn: list[str] = []
        for i in range(0, len(raw), 32):
            e = raw[i:i + 32]
            if e[0] == 0:
                break
            if e[0] == 0xE5:
                lfn = []
                continue
            attr = e[11]
            if attr == 0x0F:
                part = (e[1:11] + e[14:26] + e[28:32]).decode("utf-16-le", "replace")
                lfn.insert(0, part.split("\x00")[0])
                continue
            if attr & 0x08:
                lfn = []
                continue
            if lfn:
                name = "".join(lfn).rstrip("\uffff")
            else:
                base = e[0:8].decode("ascii", "replace").rstrip()
                ext = e[8:11].decode("ascii", "replace").rstrip()
                # Windows NT case flags: a lower-case 8.3 name (Linux vfat and mtools
                # write "latest" so, without a long name).
                if e[12] & 0x08:
                    base = base.lower()
                if e[12] & 0x10:
                    ext = ext.lower()
                name = base + ("." + ext if ext else "")
            lfn = []
            hi, lo = struct.unpack_from("<H", e, 20)[0], struct.unpack_from("<H", e, 26)[0]
            size = struct.unpack_from("<I", e, 28)[0]
            entries[name] = ((hi << 16) | lo, size, bool(attr & 0x10))
        return entries

    def listdir(self, path: str) -> dict[str, tuple[int, int, bool]]:
        cluster: int | None = None
        for part in [p for p in path.split("/") if p]:
            entry = self._entries(cluster).get(part)
            if entry is None or not entry[2]:
                raise NotOnDrive("no directory %r on the drive" % path)
            cluster = entry[0]
        return self._entries(cluster)

    def read_dir_files(self, path: str, max_size: int, only: "tuple[str, ...] | None" = None
                       ) -> dict[str, bytes]:
        files = {}
        for name, (cluster, size, is_dir) in self.listdir(path).items():
            if is_dir or (only is not None and name not in only):
                continue
            if size > max_size:
                raise AgentError("payload file %r is too large (%d bytes)" % (name, size))
            data = self._chain(cluster, size) if size else b""
            if len(data) != size:
                raise AgentError("payload file %r is truncated on the drive" % name)
            files[name] = data
        return files


class IsoReader:
    """Read-only ISO9660 reader that names files as Linux's isofs does when it mounts the
    drive (fs/isofs: inode.c chooses the tree, rock.c and joliet.c the names):

    * Rock Ridge when the primary root's '.' record carries an ER entry (found through
      its SUSP entries, continuation areas included): each record's name is its NM entries
      joined (the CONTINUE flag), after the skip bytes the root's SP entry gives; a record
      without NM keeps its ISO9660 name, one with RE (a relocated directory's stand-in) or
      SL (a symlink: not followed here) is left out.
    * Else the Joliet tree when a supplementary descriptor has Joliet's escape sequence
      (%/@, %/C, %/E): UCS-2 big-endian names. Also when Rock Ridge's primary root is
      empty, as the kernel does for such broken discs.
    * Else ISO9660 names (';1' and a trailing '.' dropped), with Rock Ridge NM names where
      the root's '.' has an SP entry (the kernel reads NM then too).

    Everything read is bounded: volume descriptors up to sector 100 (as the kernel),
    directories up to DIR_MAX bytes, continuation areas within one block each, at most
    CE_HOPS of them per record and CE_BLOCKS in all, names up to NAME_MAX bytes. A
    structure outside those bounds (a continuation loop, a length past its area, a name
    overflow) is an AgentError, not a guess. Not handled (no config drive has them):
    CD-XA system use areas, relocated deep directories (CL), multi-extent files.
    """

    DIR_MAX = 256 * 1024  # bytes of one directory (nova's and netinject's: one block)
    CE_HOPS = 8  # continuation areas one record may chain (the kernel allows 32)
    CE_BLOCKS = 64  # distinct continuation blocks one reader reads
    NAME_MAX = 255  # bytes of a Rock Ridge name (NAME_MAX)
    VD_END = 100  # the kernel looks for volume descriptors in sectors 16..99
    JOLIET_ESCAPES = (b"%/@", b"%/C", b"%/E")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.dirs: dict[tuple[int, int], bytes] = {}
        self.ce_blocks: dict[int, bytes] = {}
        self.skip = 0
        self.rock = False
        self.joliet = False
        # The primary descriptor and the next ones in one read (genisoimage: the Joliet
        # descriptor, then the terminator).
        head = os.pread(self.fd, 4 * 2048, 16 * 2048)
        if len(head) < 2048:
            raise AgentError("drive truncated (short read at offset %d)" % (16 * 2048))
        pvd = head[:2048]
        if pvd[1:6] != b"CD001":
            raise AgentError("not an ISO9660 filesystem")
        self.block = struct.unpack_from("<H", pvd, 128)[0]
        if self.block not in (512, 1024, 2048):
            raise AgentError("not an ISO9660 filesystem (logical block size %d)" % self.block)
        self.root = self._record(pvd[156:156 + 34])[:2]
        svd = self._joliet_descriptor(head)
        raw = self._directory(*self.root)
        rock_ridge, sp = self._root_extensions(raw)
        if svd is not None and (not rock_ridge or self._only_dots(raw)):
            self.joliet = True
            self.root = self._record(svd[156:156 + 34])[:2]
        else:
            self.rock = rock_ridge or sp

    def _read(self, off: int, size: int) -> bytes:
        data = os.pread(self.fd, size, off)
        if len(data) != size:
            raise AgentError("drive truncated (short read at offset %d)" % off)
        return data

    def _joliet_descriptor(self, head: bytes) -> "bytes | None":
        """The first Joliet supplementary volume descriptor after the primary one (in
        ``head``, sectors 16 to 19, else read four sectors at a time), up to the
        terminator, sector 100 or the drive's end."""
        chunk, first = head[2048:], 17
        for _reads in range(self.VD_END // 4):  # bounded: ``first`` grows each time
            for at in range(0, len(chunk) - 2047, 2048):
                vd = chunk[at:at + 2048]
                if vd[1:6] != b"CD001":
                    continue  # the kernel skips what it does not recognize
                if vd[0] == 255:
                    return None
                if vd[0] == 2 and vd[88:91] in self.JOLIET_ESCAPES:
                    return vd
            first += len(chunk) // 2048
            if len(chunk) % 2048 or first >= self.VD_END or not chunk:
                return None
            chunk = os.pread(self.fd, min(4, self.VD_END - first) * 2048, first * 2048)
        return None

    @staticmethod
    def _record(rec: bytes) -> tuple[int, int, bool, str]:
        extent, size = struct.unpack_from("<I", rec, 2)[0], struct.unpack_from("<I", rec, 10)[0]
        flags, nlen = rec[25], rec[32]
        name = rec[33:33 + nlen].decode("ascii", "replace").split(";")[0].rstrip(".")
        return extent, size, bool(flags & 2), name

    def _directory(self, extent: int, size: int) -> bytes:
        if size > self.DIR_MAX:
            raise AgentError("ISO9660 directory too large (%d bytes)" % size)
        raw = self.dirs.get((extent, size))
        if raw is None:
            raw = self.dirs[(extent, size)] = self._read(extent * self.block, size)
        return raw

    def _records(self, raw: bytes) -> "list[bytes]":
        """The directory records of a directory's bytes (none crosses a block: a zero
        length byte pads to the next one)."""
        out = []
        i = 0
        while i < len(raw):
            length = raw[i]
            if length == 0:
                i = (i // self.block + 1) * self.block
                continue
            if length < 34 or i + length > len(raw) or 33 + raw[i + 32] > length:
                raise AgentError("bad ISO9660 directory record at byte %d" % i)
            out.append(raw[i:i + length])
            i += length
        return out

    def _only_dots(self, raw: bytes) -> bool:
        return all(rec[32] == 1 and rec[33] in (0, 1) for rec in self._records(raw))

    def _susp(self, rec: bytes, skip: int) -> "list[tuple[bytes, bytes]]":
        """The SUSP entries (signature, whole entry) of a record's system use area and of
        the continuation areas its CE entries chain, bounded (AgentError past a bound)."""
        start = 33 + rec[32]
        start += (start & 1) + skip
        area = rec[start:]
        entries: list[tuple[bytes, bytes]] = []
        for _area in range(self.CE_HOPS + 1):
            ce = None
            at = 0
            while len(area) - at > 2:  # one or two bytes may pad an area
                sig, length = area[at:at + 2], area[at + 2]
                if length < 3:
                    return entries  # nothing usable past here (the kernel stops too)
                entry = area[at:at + length]
                if len(entry) < length:
                    raise AgentError("Rock Ridge entry %r runs past its area" % sig)
                at += length
                if sig == b"ST":
                    break
                if sig == b"CE":
                    if length < 28:
                        raise AgentError("Rock Ridge CE entry too short")
                    ce = (struct.unpack_from("<I", entry, 4)[0],
                          struct.unpack_from("<I", entry, 12)[0],
                          struct.unpack_from("<I", entry, 20)[0])
                entries.append((sig, entry))
            if ce is None:
                return entries
            area = self._continuation(*ce)
        raise AgentError("more than %d Rock Ridge continuation areas for one record "
                         "(a loop?)" % self.CE_HOPS)

    def _continuation(self, extent: int, offset: int, size: int) -> bytes:
        if offset > self.block - 4 or size > self.block - offset:
            raise AgentError("Rock Ridge continuation area out of its block "
                             "(offset %d, size %d)" % (offset, size))
        data = self.ce_blocks.get(extent)
        if data is None:
            if len(self.ce_blocks) >= self.CE_BLOCKS:
                raise AgentError("more than %d Rock Ridge continuation blocks"
                                 % self.CE_BLOCKS)
            data = self.ce_blocks[extent] = self._read(extent * self.block, self.block)
        return data[offset:offset + size]

    def _root_extensions(self, raw: bytes) -> tuple[bool, bool]:
        """(ER found, SP found) in the root directory's '.' record; SP sets the skip
        bytes of every other record's system use area."""
        records = self._records(raw)
        if not records or records[0][32] != 1 or records[0][33] != 0:
            return False, False
        rock_ridge = sp = False
        for sig, entry in self._susp(records[0], 0):
            if sig == b"SP":
                if len(entry) < 7:
                    raise AgentError("Rock Ridge SP entry too short")
                if entry[4:6] != b"\xbe\xef":
                    break  # not SUSP after all (the kernel stops there too)
                sp = True
                self.skip = entry[6]
            elif sig == b"ER":
                if len(entry) < 8 or 8 + entry[4] > len(entry):
                    raise AgentError("Rock Ridge ER entry too short")
                rock_ridge = True
        return rock_ridge, sp

    def _rock_name(self, rec: bytes) -> "str | None":
        """The record's Rock Ridge name: its NM entries joined; '' for none; None for a
        record to leave out (RE: a relocated directory's stand-in; SL: a symlink)."""
        parts = []
        total = 0
        for sig, entry in self._susp(rec, self.skip):
            if sig in (b"RE", b"SL"):
                return None
            if sig != b"NM" or len(entry) < 5 or entry[4] & ~1:
                continue  # NM flags CURRENT, PARENT, HOST (or others): no name here
            total += len(entry) - 5
            if total > self.NAME_MAX:
                raise AgentError("Rock Ridge name longer than %d bytes" % self.NAME_MAX)
            parts.append(entry[5:])
        return b"".join(parts).decode("utf-8", "replace")

    def _name(self, rec: bytes) -> "str | None":
        nlen = rec[32]
        if nlen == 1 and rec[33] in (0, 1):
            return None  # '.' and '..'
        if self.joliet:
            name = rec[33:33 + nlen - (nlen & 1)].decode("utf-16-be", "replace")
            if name.endswith(";1"):
                name = name[:-2]
            while len(name) >= 2 and name.endswith("."):
                name = name[:-1]
            return name
        if self.rock:
            rock = self._rock_name(rec)
            if rock is None or rock:
                return rock
        return self._record(rec)[3]

    def _entries(self, extent: int, size: int) -> dict[str, tuple[int, int, bool]]:
        out = {}
        for rec in self._records(self._directory(extent, size)):
            if rec[25] & 4:
                continue  # an associated file: the kernel hides them (no 'showassoc')
            name = self._name(rec)
            if name:
                out[name] = self._record(rec)[:3]
        return out

    def read_dir_files(self, path: str, max_size: int, only: "tuple[str, ...] | None" = None
                       ) -> dict[str, bytes]:
        extent, size = self.root
        for part in [p for p in path.split("/") if p]:
            # nova's genisoimage keeps lower case (-allow-lowercase); netinject's
            # writer uses the strict upper-case names.
            found = self._entries(extent, size)
            entry = found.get(part) or found.get(iso_name(part))
            if entry is None or not entry[2]:
                raise NotOnDrive("no directory %r on the drive" % path)
            extent, size = entry[0], entry[1]
        files = {}
        for name, (ext, sz, is_dir) in self._entries(extent, size).items():
            if is_dir or (only is not None and name not in only):
                continue
            if sz > max_size:
                raise AgentError("payload file %r is too large (%d bytes)" % (name, sz))
            files[name] = self._read(ext * self.block, sz)
        return files
