"""Read-only FAT and ISO9660 readers: just enough to read the netinject payload off a
config drive without mounting it (no kernel vfat module, nothing to unmount)."""

import posix
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
        self.window = posix.pread(self.fd, self.WINDOW, self.window_off)

    def _read(self, off: int, size: int) -> bytes:
        rel = off - self.window_off
        if rel >= 0 and rel + size <= len(self.window):
            return self.window[rel:rel + size]
        data = posix.pread(self.fd, size, off)
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
    """Read-only ISO9660 reader (primary volume names, as netinject writes them)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        pvd = self._read(16 * 2048, 2048)
        if pvd[1:6] != b"CD001":
            raise AgentError("not an ISO9660 filesystem")
        self.block = struct.unpack_from("<H", pvd, 128)[0]
        if self.block not in (512, 1024, 2048):
            raise AgentError("not an ISO9660 filesystem (logical block size %d)" % self.block)
        self.root = self._record(pvd[156:156 + 34])

    def _read(self, off: int, size: int) -> bytes:
        data = posix.pread(self.fd, size, off)
        if len(data) != size:
            raise AgentError("drive truncated (short read at offset %d)" % off)
        return data

    @staticmethod
    def _record(rec: bytes) -> tuple[int, int, bool, str]:
        extent, size = struct.unpack_from("<I", rec, 2)[0], struct.unpack_from("<I", rec, 10)[0]
        flags, nlen = rec[25], rec[32]
        name = rec[33:33 + nlen].decode("ascii", "replace").split(";")[0].rstrip(".")
        return extent, size, bool(flags & 2), name

    def _entries(self, extent: int, size: int) -> dict[str, tuple[int, int, bool]]:
        raw = self._read(extent * self.block, size)
        out = {}
        i = 0
        while i < len(raw):
            length = raw[i]
            if length == 0:
                i = (i // self.block + 1) * self.block
                continue
            ext, sz, is_dir, name = self._record(raw[i:i + length])
            if raw[i + 32] == 1 and raw[i + 33] in (0, 1):
                name = ""
            if name:
                out[name] = (ext, sz, is_dir)
            i += length
        return out

    def read_dir_files(self, path: str, max_size: int, only: "tuple[str, ...] | None" = None
                       ) -> dict[str, bytes]:
        extent, size = self.root[0], self.root[1]
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
