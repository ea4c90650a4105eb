#!/usr/bin/python3 -IS
"""netinject-guest: the inject_network boot service (runs inside the VM).

Standard library only, Python >= 3.9, one file: an image builder drops it in with
``netinject-guest install`` (or ``python3 netinject-guest.pyz install --root IMAGE``).

``netinject-guest run`` runs early in boot, before any network service:

1. find the config drive (label config-2/CONFIG-2, vfat or iso9660) through udev's
   /dev/disk/by-label link, else by probing the block devices the kernel lists in
   /sys/class/block, with a short bounded wait;
2. read the netinject payload straight off the device (a small read-only FAT and
   ISO9660 reader: no mount, no kernel vfat module, nothing to unmount);
3. verify the manifest: known format, every file's sha256, every guest path inside an
   allowlist, no ``..``, no symlinked parents;
4. on the instance's first boot (manifest uuid != /var/lib/netinject/instance-id), install
   each file atomically, keeping the originals under /var/lib/netinject/backup/<uuid>/;
5. rename NICs to the names the manifest pins to their MACs (udev named them before the
   rules existed): links down, temporary names for swaps, SIOCSIFNAME;
6. record the uuid last, so a crash midway re-runs on the next boot.

It never blocks or breaks boot: on any problem it changes nothing (or rolls back what it
changed), logs why, and exits 0 so the image's own DHCP configuration applies.

Every path goes through ``--root`` (and ``--sysfs``/``--dev``) so tests run it against a
directory tree shaped like a guest.
"""

# Built-in modules only (compiled into the interpreter: nothing to read from disk). Measured
# in a TCG guest on a first boot, ``import os`` costs ~40-47 ms (its frozen code and
# _collections_abc are paged in from the interpreter binary), json ~90 ms, re ~100 ms,
# hashlib ~50 ms (OpenSSL): the agent uses posix with its own few path helpers, a
# line-format manifest, hand-written checks and the built-in _sha256. argparse is
# imported only for the non-boot commands.
import _stat
import _struct as struct  # struct.py would be a module to load
import posix
import sys
import time
from _codecs import utf_16_le_decode

STRUCT_ERROR: type[Exception] = getattr(struct, "error", ValueError)  # not in the stubs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

VERSION = "0.1.0"
MANIFEST_FORMATS = (1,)
LABELS = ("config-2", "CONFIG-2")
STATE_DIR = "var/lib/netinject"
LOG_FILE = "var/log/netinject.log"
DEFAULT_WAIT = 1.0
POLL = 0.05

# Guest paths the payload may write: network config, udev rules, resolver, hostname.
ALLOWED_FILES = ("etc/network/interfaces", "etc/resolv.conf", "etc/hostname")
ALLOWED_DIRS = ("etc/network/interfaces.d/", "etc/udev/rules.d/")
ALLOWED_MODES = (0o644, 0o640, 0o600, 0o444)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_HEX = frozenset("0123456789abcdef")


# -- paths (posixpath's behaviour for the cases the agent has; posixpath needs os) --------


def join(path: str, *parts: str) -> str:
    for part in parts:
        if part.startswith("/"):
            path = part
        elif not path or path.endswith("/"):
            path += part
        else:
            path += "/" + part
    return path


def dirname(path: str) -> str:
    head = path[:path.rfind("/") + 1]
    stripped = head.rstrip("/")
    return stripped if stripped else head


def basename(path: str) -> str:
    return path[path.rfind("/") + 1:]


def normpath(path: str) -> str:
    """'.' and '..' resolved lexically, as posixpath.normpath ('/..' is '/'; POSIX keeps
    exactly two leading slashes)."""
    absolute = path.startswith("/")
    lead = "//" if path.startswith("//") and not path.startswith("///") else "/"
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            out.append(part)
        elif out and out[-1] != "..":
            out.pop()
        elif not absolute:
            out.append(part)
    text = "/".join(out)
    return (lead + text) if absolute else (text or ".")


def _mode(path: str, follow: bool = True) -> int:
    """The file's st_mode, 0 if it cannot be looked at."""
    try:
        return (posix.stat(path) if follow else posix.lstat(path)).st_mode
    except (OSError, ValueError):
        return 0


def lexists(path: str) -> bool:
    return _mode(path, False) != 0


def exists(path: str) -> bool:
    return _mode(path) != 0


def isdir(path: str) -> bool:
    return _stat.S_ISDIR(_mode(path))


def isfile(path: str) -> bool:
    return _stat.S_ISREG(_mode(path))


def islink(path: str) -> bool:
    return _stat.S_ISLNK(_mode(path, False))


def makedirs(path: str, mode: int = 0o777) -> None:
    """mkdir -p (an existing directory is fine)."""
    try:
        posix.mkdir(path, mode)
    except FileNotFoundError:
        parent = dirname(path.rstrip("/"))
        if not parent or parent == path:
            raise
        makedirs(parent, mode)
        try:
            posix.mkdir(path, mode)
        except FileExistsError:
            if not isdir(path):
                raise
    except FileExistsError:
        if not isdir(path):
            raise


def relative_to(root: str, path: str) -> str:
    """``path`` below ``root`` without the root ('/' -> 'dev/vdb'); other paths without
    their leading '/'."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path.lstrip("/")


def is_plain_name(name: str) -> bool:
    """A file name of letters, digits, '.', '_', '-' (not starting with '.' or '-')."""
    return (0 < len(name) <= 128 and name[0] not in ".-" and set(name) <= _NAME_CHARS)


def is_allowed_path(path: str) -> bool:
    """One of the allowlisted guest paths: no '..', no absolute path, no other place."""
    if path in ALLOWED_FILES:
        return True
    for d in ALLOWED_DIRS:
        if path.startswith(d) and is_plain_name(path[len(d):]):
            return not d.startswith("etc/udev") or path.endswith(".rules")
    return False


def is_uuid(text: str) -> bool:
    parts = text.split("-")
    return ([len(p) for p in parts] == [8, 4, 4, 4, 12]
            and set("".join(parts)) <= _HEX)


def is_mac(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 6 and all(len(p) == 2 and set(p) <= _HEX for p in parts)


def is_nic_name(text: str) -> bool:
    return text.startswith("eth") and 3 < len(text) <= 7 and text[3:].isdigit() \
        and text[3:].isascii()


def sha256_hex(data: bytes) -> str:
    # The built-in module (_sha256 up to 3.11, _sha2 from 3.12) needs no OpenSSL, whose
    # loading is most of hashlib's import time; hashlib is the fallback.
    for module in ("_sha256", "_sha2", "hashlib"):
        try:
            return str(__import__(module).sha256(data).hexdigest())
        except ImportError:
            continue
    raise AgentError("no sha256 implementation in this Python")


class AgentError(Exception):
    """A reason to step aside and leave the image's own configuration in place."""


# -- logging ------------------------------------------------------------------------------


class Log:
    """Timestamped lines to the console (stderr) and /var/log/netinject.log.

    Lines are collected and written once, when the run ends: each write to the console
    (journald, then the serial console) costs ~4 ms under emulation, more than the
    later-boot check itself. The run is short and always ends in flush().
    """

    def __init__(self, root: str, quiet: bool = False, t0: "float | None" = None,
                 cpu0: "float | None" = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self.cpu0 = time.process_time() if cpu0 is None else cpu0
        self.root = root
        self.quiet = quiet
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        self.lines.append("netinject: [%7.1f ms] %s"
                          % ((time.monotonic() - self.t0) * 1000, msg))

    def cpu_ms(self) -> float:
        """CPU time this process spent since t0 (the rest of the elapsed time went to
        waiting: I/O, and other tasks on the CPU)."""
        return (time.process_time() - self.cpu0) * 1000

    def flush(self) -> None:
        text = "\n".join(self.lines) + "\n"
        if not self.quiet and self.lines:
            try:
                sys.stderr.write(text)
                sys.stderr.flush()
            except OSError:
                pass
        path = join(self.root, LOG_FILE)
        flags = (posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_NOFOLLOW
                 | posix.O_NONBLOCK | posix.O_CLOEXEC)
        try:
            no_symlink_parents(self.root, LOG_FILE)
            try:
                fd = posix.open(path, flags, 0o644)
            except FileNotFoundError:  # no log directory yet (an image tree)
                makedirs(dirname(path))
                fd = posix.open(path, flags, 0o644)
            try:
                if _stat.S_ISREG(posix.fstat(fd).st_mode):
                    posix.write(fd, text.encode("utf-8", "replace"))
            finally:
                posix.close(fd)
        except (OSError, AgentError):
            pass  # a read-only, full or tampered /var must not break boot


# -- finding and reading the drive -------------------------------------------------------


class Drive:
    """A found config drive: its device, filesystem and volume id (the FAT serial or the
    ISO volume set id: netinject derives both from the instance uuid)."""

    def __init__(self, path: str, kind: str, volume_id: str, fd: int = -1) -> None:
        self.path = path
        self.kind = kind
        self.volume_id = volume_id
        self.fd = fd  # kept open from the probe to the payload read (one open per boot)

    def close(self) -> None:
        if self.fd >= 0:
            posix.close(self.fd)
            self.fd = -1

    @property
    def ident(self) -> str:
        return "%s:%s" % (self.kind, self.volume_id)


def probe_label(dev: str) -> "Drive | None":
    """The drive if the device carries a config-2 label (vfat or iso9660), else None.

    A found drive keeps its file descriptor open for read_payload: closing the last
    descriptor of a block device drops its page cache, so a second open would read the
    boot sector from the device again.
    """
    try:
        # O_NONBLOCK: a FIFO (or a tty) put where a device should be must not hang boot
        # in open(); only a block device (or an image file, for tests) is read.
        fd = posix.open(dev, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK)
    except OSError:
        return None
    found = None
    try:
        mode = posix.fstat(fd).st_mode
        if not (_stat.S_ISBLK(mode) or _stat.S_ISREG(mode)):
            posix.close(fd)
            return None
        boot = posix.pread(fd, 512, 0)
        if len(boot) == 512 and boot[510:512] == b"\x55\xaa":
            # FAT12/16 keep serial and label at 39/43, FAT32 at 67/71 ("FAT" at 54/82).
            for off, fs_off in ((43, 54), (71, 82)):
                if boot[fs_off:fs_off + 3] == b"FAT":
                    label = boot[off:off + 11].rstrip(b" \x00").decode("ascii", "replace")
                    if label in LABELS:
                        serial = struct.unpack_from("<I", boot, off - 4)[0]
                        found = Drive(dev, "vfat", "%08x" % serial, fd)
        if found is None:
            pvd = posix.pread(fd, 2048, 32768)
            if pvd[0:6] == b"\x01CD001":
                label = pvd[40:72].rstrip(b" \x00").decode("ascii", "replace")
                if label in LABELS:
                    volset = pvd[190:318].rstrip(b" \x00").decode("ascii", "replace")
                    found = Drive(dev, "iso9660", volset, fd)
    except OSError:
        pass
    if found is None:
        posix.close(fd)
    return found


def read_small(path: str, limit: int = 4096) -> bytes:
    """The start of a small regular file (sysfs attributes, the state file), no file
    object. Opened non-blocking and checked to be a regular file: a FIFO put there
    cannot hang the agent."""
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK)
    try:
        if not _stat.S_ISREG(posix.fstat(fd).st_mode):
            raise OSError(22, "not a regular file: %s" % path)
        return posix.read(fd, limit)
    finally:
        posix.close(fd)


def no_symlink_parents(root: str, rel: str) -> None:
    """AgentError if a directory on the way from ``root`` to ``root/rel`` is a symlink
    (the agent's state, backups and log never leave the root through one)."""
    cur = root
    for part in rel.split("/")[:-1]:
        cur = join(cur, part)
        if islink(cur):
            raise AgentError("refusing to use %s: it is a symlink" % cur)


# -- where the drive came from ------------------------------------------------------------
#
# Integrity (the manifest's sha256s) is not origin: any volume can carry the label
# config-2. nova attaches the real drive read-only and sets the SMBIOS system UUID to the
# instance uuid (libvirt's <sysinfo>, QEMU's -uuid), which the guest reads in
# /sys/class/dmi/id/product_uuid. A drive is trusted only if both hold.


def ro_attribute(sysfs: str, drive: "Drive") -> str:
    """The sysfs 'ro' attribute of the drive's device: /sys/dev/block/MAJ:MIN/ro for a
    block device, else /sys/class/block/<name>/ro (an image file standing in for one)."""
    if drive.fd >= 0:
        st = posix.fstat(drive.fd)
        if _stat.S_ISBLK(st.st_mode):
            return join(sysfs, "dev/block", "%d:%d" % (posix.major(st.st_rdev),
                                                       posix.minor(st.st_rdev)), "ro")
    return join(sysfs, "class/block", basename(drive.path), "ro")


def check_origin(sysfs: str, drive: "Drive", uuid: str) -> None:
    """AgentError unless the drive is read-only and its manifest names this machine's
    SMBIOS system UUID."""
    attr = ro_attribute(sysfs, drive)
    try:
        ro = read_small(attr, 16).strip()
    except OSError:
        raise AgentError("cannot tell whether %s is read-only (no %s): not trusting it"
                         % (drive.path, attr)) from None
    if ro != b"1":
        raise AgentError("%s is writable (%s is %r): nova attaches the config drive "
                         "read-only, so this is not it" % (drive.path, attr,
                                                           ro.decode("ascii", "replace")))
    try:
        system = read_small(join(sysfs, "class/dmi/id/product_uuid"), 64).decode(
            "ascii", "replace").strip().lower()
    except OSError:
        raise AgentError("cannot read the system UUID (%s): not trusting the drive"
                         % join(sysfs, "class/dmi/id/product_uuid")) from None
    if system != uuid.lower():
        raise AgentError("the drive is for instance %s but this machine's system UUID is "
                         "%s: not trusting it" % (uuid, system or "empty"))


def probe_by_label(dev: str) -> "Drive | None":
    """The drive udev already linked as /dev/disk/by-label/config-2, if it did: one
    readlink instead of listing and sizing every block device."""
    for label in LABELS:
        link = join(dev, "disk/by-label", label)
        try:
            target = posix.readlink(link)
        except OSError:
            continue
        path = normpath(join(dirname(link), target))
        if not path.startswith(dev.rstrip("/") + "/"):
            continue  # points outside the device directory: not udev's link
        found = probe_label(path)
        if found is not None:
            return found
    return None


def _fat_uuid(serial: str) -> str:
    """blkid's UUID for a FAT volume serial ('3c598fc9' -> '3C59-8FC9')."""
    return "%s-%s" % (serial[:4].upper(), serial[4:8].upper())


def _size(sysfs: str, name: str) -> int:
    try:
        return int(read_small(join(sysfs, "class/block", name, "size")).strip() or 0)
    except (OSError, ValueError):
        return 0


def find_drive(sysfs: str, dev: str, wait: float) -> "Drive | None":
    """Probe whole block devices listed in /sys/class/block until one is config-2.

    Smallest first (a config drive is 64 MiB or less; the root disk is larger), so the
    usual case reads one sector of one device.
    """
    deadline = time.monotonic() + wait
    seen: set[str] = set()
    while True:
        try:
            names = posix.listdir(join(sysfs, "class/block"))
        except OSError:
            names = []
        candidates = [n for n in names if n not in seen
                      and not n.startswith(("loop", "ram", "zram", "dm-", "md"))
                      and not exists(join(sysfs, "class/block", n, "partition"))]
        for name in sorted(candidates, key=lambda n: (_size(sysfs, n) or 1 << 62, n)):
            seen.add(name)
            found = probe_label(join(dev, name))
            if found is not None:
                return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL)
        seen.clear()


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
                # _codecs is built in: str.decode("utf-16-le") would import a codec
                # module from disk on the boot path.
                part = utf_16_le_decode(e[1:11] + e[14:26] + e[28:32], "replace")[0]
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
                raise AgentError("no directory %r on the drive" % path)
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
            entry = self._entries(extent, size).get(iso_name(part))
            if entry is None or not entry[2]:
                raise AgentError("no directory %r on the drive" % path)
            extent, size = entry[0], entry[1]
        files = {}
        for name, (ext, sz, is_dir) in self._entries(extent, size).items():
            if is_dir or (only is not None and name not in only):
                continue
            if sz > max_size:
                raise AgentError("payload file %r is too large (%d bytes)" % (name, sz))
            files[name] = self._read(ext * self.block, sz)
        return files


def iso_name(name: str) -> str:
    """The primary-volume name netinject's iso9660 writer gives a file or directory."""
    return name.upper().replace("-", "_")


MAX_FILE = 1 << 20


MANIFEST_NAMES = ("manifest", "MANIFEST")


def read_payload(drive: Drive, only: "tuple[str, ...] | None" = None) -> dict[str, bytes]:
    """Files of the drive's netinject/ directory (all, or just the names in ``only``),
    read without mounting. On iso9660 the names are the primary-volume names."""
    try:
        if drive.fd < 0:
            fd = posix.open(drive.path, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK)
            if not _stat.S_ISBLK(posix.fstat(fd).st_mode) and not _stat.S_ISREG(
                    posix.fstat(fd).st_mode):
                posix.close(fd)
                raise AgentError("%s is not a block device" % drive.path)
            drive.fd = fd
        reader = FatReader(drive.fd) if drive.kind == "vfat" else IsoReader(drive.fd)
        return reader.read_dir_files("netinject", MAX_FILE, only)
    except (OSError, STRUCT_ERROR, IndexError, UnicodeError, ValueError, ArithmeticError) as exc:
        raise AgentError("cannot read the drive %s: %s" % (drive.path, exc)) from None


def _lookup(payload: dict[str, bytes], name: str) -> "bytes | None":
    data = payload.get(name)
    return data if data is not None else payload.get(iso_name(name))


# -- manifest -----------------------------------------------------------------------------


class Entry:
    def __init__(self, path: str, data: bytes, mode: int) -> None:
        self.path = path
        self.data = data
        self.mode = mode


class Manifest:
    def __init__(self, uuid: str, entries: list[Entry], nics: list[tuple[str, str]]) -> None:
        self.uuid = uuid
        self.entries = entries
        self.nics = nics


def manifest_instance(raw: bytes) -> "str | None":
    """The instance uuid a manifest names (its 'instance' record), without checking the
    rest: the later-boot fast path only needs to know whether anything is new."""
    for line in raw.split(b"\n")[:8]:
        if line.startswith(b"instance "):
            return line[9:].decode("ascii", "replace").strip()
    return None


def verify(payload: dict[str, bytes]) -> Manifest:
    """Check the manifest and every file it lists; AgentError on anything wrong."""
    raw = _lookup(payload, "manifest")
    if raw is None:
        raise AgentError("no netinject/manifest on the drive")
    try:
        lines = raw.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise AgentError("manifest is not ASCII text") from None
    if lines and lines[-1] == "":
        lines.pop()
    head = lines[0].split(" ") if lines else []
    if len(head) != 2 or head[0] != "netinject-manifest":
        raise AgentError("manifest does not start with 'netinject-manifest <format>'")
    if not head[1].isdigit() or int(head[1]) not in MANIFEST_FORMATS:
        raise AgentError("unknown manifest format %r (this agent knows %s)"
                         % (head[1], ", ".join(map(str, MANIFEST_FORMATS))))
    uuid = None
    entries: list[Entry] = []
    nics: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split(" ")
        key = fields[0]
        if key in ("generator", "style") or key.startswith("#"):
            continue
        if key == "instance":
            if len(fields) != 2 or not is_uuid(fields[1]) or uuid is not None:
                raise AgentError("manifest line %d: bad instance record %r" % (n, line))
            uuid = fields[1]
        elif key == "file":
            if len(fields) != 5:
                raise AgentError("manifest line %d: bad file record %r" % (n, line))
            path, source, mode, digest = fields[1:]
            if not is_allowed_path(path):
                raise AgentError("manifest line %d: %r is not an allowed guest path"
                                 % (n, path))
            if path in seen:
                raise AgentError("manifest lists %r twice" % path)
            seen.add(path)
            if not is_plain_name(source) or source in MANIFEST_NAMES:
                raise AgentError("manifest line %d: source %r is not a plain file name"
                                 % (n, source))
            if not (len(mode) in (3, 4) and set(mode) <= set("01234567")) \
                    or int(mode, 8) not in ALLOWED_MODES:
                raise AgentError("manifest line %d: mode %r is not allowed" % (n, mode))
            data = _lookup(payload, source)
            if data is None:
                raise AgentError("payload file %r (for %s) is missing" % (source, path))
            if sha256_hex(data) != digest:
                raise AgentError("sha256 mismatch for %s: the drive is damaged or was "
                                 "altered" % path)
            entries.append(Entry(path, data, int(mode, 8)))
        elif key == "nic":
            if len(fields) != 3 or not is_nic_name(fields[1]) or not is_mac(fields[2]):
                raise AgentError("manifest line %d: bad nic record %r" % (n, line))
            if any(fields[1] == a or fields[2] == b for a, b in nics):
                raise AgentError("manifest line %d: NIC name or MAC listed twice" % n)
            nics.append((fields[1], fields[2]))
        else:
            raise AgentError("manifest line %d: unknown record %r" % (n, key))
    if uuid is None:
        raise AgentError("manifest names no instance")
    if not entries:
        raise AgentError("manifest lists no files")
    return Manifest(uuid, entries, nics)


# -- installing files ---------------------------------------------------------------------


def _safe_target(root: str, rel: str, dirs: "set[str]") -> str:
    """root/rel, refusing any existing parent below root that is a symlink. ``dirs``
    collects the parents found to be real directories: shared parents are looked at once,
    and staging creates only the ones missing from it."""
    cur = root
    for part in rel.split("/")[:-1]:
        cur = join(cur, part)
        if cur in dirs:
            continue
        mode = _mode(cur, follow=False)
        if _stat.S_ISLNK(mode):
            raise AgentError("refusing to write through symlinked directory %s" % cur)
        if _stat.S_ISDIR(mode):
            dirs.add(cur)
    return join(root, rel)


def target_kind(target: str) -> str:
    """'file', 'symlink' or 'absent' (one lstat); AgentError for anything else."""
    return target_stat(target)[0]


def target_stat(target: str) -> "tuple[str, posix.stat_result | None]":
    """target_kind and the lstat result (None when absent)."""
    try:
        st = posix.lstat(target)
    except FileNotFoundError:
        return "absent", None
    except OSError as exc:
        raise AgentError("cannot look at %s: %s" % (target, posix.strerror(exc.errno or 5))
                         ) from None
    if _stat.S_ISLNK(st.st_mode):
        return "symlink", st
    if _stat.S_ISREG(st.st_mode):
        return "file", st
    raise AgentError("%s exists and is not a regular file" % target)


def _fsync_dir(path: str) -> None:
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_DIRECTORY)
    except OSError:
        return
    try:
        posix.fsync(fd)
    except OSError:
        pass
    finally:
        posix.close(fd)


def _tmp_beside(path: str) -> str:
    """The temporary name a file is staged under, beside its target."""
    return join(dirname(path), ".%s.netinject-tmp" % basename(path))


def _remove_stale(path: str) -> None:
    """Make way for a new file at a name of ours (a staging or temporary name): a regular
    file an interrupted run left is unlinked (only its name: a hard link to an outside
    file leaves that file alone); anything else there is not ours to touch."""
    kind = target_kind(path)
    if kind == "file":
        posix.unlink(path)
    elif kind != "absent":
        raise AgentError("%s is in the way (a %s, not a file netinject left)" % (path, kind))


def _create(path: str, data: bytes, mode: int, owner: "tuple[int, int] | None" = None
            ) -> int:
    """Create ``path`` afresh (O_EXCL|O_NOFOLLOW: never through a symlink or into an
    existing file), write ``data`` with ``mode`` (and ``owner``); the open descriptor,
    for the caller to fsync and close."""
    fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW
                    | posix.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view):]
        if owner is not None:
            posix.fchown(fd, owner[0], owner[1])
        posix.fchmod(fd, mode)
    except OSError:
        posix.close(fd)
        try:
            posix.unlink(path)
        except OSError:
            pass
        raise
    return fd


def write_atomic(path: str, data: bytes, mode: int) -> None:
    """Write beside the target, fsync, rename over it (a symlink is replaced, never
    followed)."""
    d = dirname(path)
    makedirs(d)
    tmp = _tmp_beside(path)
    _remove_stale(tmp)
    fd = _create(tmp, data, mode)
    try:
        posix.fsync(fd)
    finally:
        posix.close(fd)
    try:
        posix.rename(tmp, path)
    except OSError:
        posix.unlink(tmp)
        raise
    _fsync_dir(d)


class Backup:
    """Originals of replaced files under /var/lib/netinject/backup/<uuid>/.

    One entry per guest path (``/`` written as ``%``): a hard link to the original file
    (or a copy when /var is another filesystem), a symlink for an original symlink, or
    an empty ``<name>.absent`` marker when there was none. Hard links, symlinks and empty
    markers are metadata only: no data to flush, and the filesystem journal commits them
    before the later renames that replace the originals. A path already backed up is
    never backed up again, so a re-run after a crash keeps the true originals rather
    than our half-installed files.
    """

    def __init__(self, root: str, uuid: str, directory: "str | None" = None) -> None:
        self.dir = directory or join(root, STATE_DIR, "backup", uuid)
        self.index: dict[str, str] = {}
        self.installed = 0  # how many files the install that made it replaced
        try:
            names = posix.listdir(self.dir)
            self.made = True
        except OSError:
            names = []
            self.made = False
        for name in names:
            kind = "absent" if name.endswith(".absent") else (
                "symlink" if islink(join(self.dir, name)) else "file")
            rel = name[:-len(".absent")] if kind == "absent" else name
            rel = rel.replace("%", "/")
            if is_allowed_path(rel):
                self.index[rel] = kind

    def _entry(self, rel: str) -> str:
        return join(self.dir, rel.replace("/", "%"))

    def save(self, rel: str, target: str, kind: str) -> None:
        """Keep the original of ``target`` (once per path); ``kind`` is target_kind's."""
        if rel in self.index:
            return
        if not self.made:
            makedirs(self.dir, 0o700)
            self.made = True
        entry = self._entry(rel)
        if kind == "symlink":
            posix.symlink(posix.readlink(target), entry)
        elif kind == "file":
            try:
                posix.link(target, entry)
            except OSError:  # another filesystem: a durable copy instead
                with open(target, "rb") as fh:
                    write_atomic(entry, fh.read(), posix.stat(target).st_mode & 0o7777)
        else:
            _remove_stale(entry + ".absent")
            _write_plain(entry + ".absent", b"", 0o600)
        self.index[rel] = kind

    def restore(self, root: str, rel: str) -> None:
        kind = self.index.get(rel)
        target = join(root, rel)
        entry = self._entry(rel)
        tmp = join(dirname(target), ".%s.netinject-restore" % basename(target))
        _remove_stale(tmp)
        if kind == "absent":
            if lexists(target):
                posix.unlink(target)
        elif kind == "symlink":
            posix.symlink(posix.readlink(entry), tmp)
            posix.rename(tmp, target)
        elif kind == "file":
            try:
                posix.link(entry, tmp)
                posix.rename(tmp, target)
            except OSError:
                with open(entry, "rb") as fh:
                    write_atomic(target, fh.read(), posix.stat(entry).st_mode & 0o7777)


def _write_plain(path: str, data: bytes, mode: int) -> None:
    posix.close(_create(path, data, mode))


class Target:
    """One file to install: the manifest entry, where it goes, and what is there now
    (kind and lstat), looked at once in the preflight."""

    def __init__(self, entry: Entry, path: str, kind: str,
                 st: "posix.stat_result | None") -> None:
        self.entry = entry
        self.path = path
        self.kind = kind
        self.st = st

    @property
    def mode(self) -> int:
        """A replaced file keeps its mode (0600 stays 0600); a new one gets the
        manifest's."""
        if self.kind == "file" and self.st is not None:
            return self.st.st_mode & 0o7777
        return self.entry.mode

    @property
    def owner(self) -> "tuple[int, int] | None":
        if self.kind == "file" and self.st is not None:
            return self.st.st_uid, self.st.st_gid
        return None


KEEP_SYMLINKS = ("etc/resolv.conf",)
"""Paths whose symlink is kept rather than replaced: resolv.conf pointing at resolvconf's
or systemd-resolved's file means the image manages DNS itself (the ENI's
dns-nameservers feeds resolvconf)."""


def stage_files(targets: "list[Target]", staged: list[str], dirs: "set[str]") -> None:
    """Write each file beside its target (appending the temporary path to ``staged``
    once it is created) and make them all durable before any rename. Parent directories
    not in ``dirs`` (those _safe_target found) are created.

    Writeback of every file is started before the first fsync, so the first fsync's
    journal commit carries the blocks of all of them and the later ones find their data
    already on disk: one commit instead of one per file (each commit is a device flush,
    milliseconds under emulation).
    """
    fds: list[int] = []
    try:
        for t in targets:
            d = dirname(t.path)
            if d not in dirs:
                makedirs(d)
                dirs.add(d)
            tmp = _tmp_beside(t.path)
            _remove_stale(tmp)
            fds.append(_create(tmp, t.entry.data, t.mode, t.owner))
            staged.append(tmp)
        if hasattr(posix, "posix_fadvise"):
            for fd in fds:
                # Starts writeback without waiting for it (WB_SYNC_NONE).
                posix.posix_fadvise(fd, 0, 0, posix.POSIX_FADV_DONTNEED)
        for fd in fds:
            posix.fsync(fd)
    finally:
        for fd in fds:
            posix.close(fd)


def install(root: str, manifest: Manifest, log: Log, after_each: object = None,
            backup_dir: "str | None" = None) -> Backup:
    """Install every manifest file as one transaction; on failure restore what was
    already replaced.

    Back up the originals (metadata only); write every new file beside its target and
    fsync it; then rename them all into place. A crash at any point leaves either the
    original or a complete new file at each path, and the true originals in the backup;
    the instance uuid is recorded only after all of it, so the next boot finishes the job.
    """
    # Preflight: every target must be writable without following a symlinked directory
    # and must not be something other than a file or symlink, before anything changes.
    dirs: set[str] = set()
    targets: list[Target] = []
    for entry in manifest.entries:
        path = _safe_target(root, entry.path, dirs)
        kind, st = target_stat(path)
        if kind == "symlink" and entry.path in KEEP_SYMLINKS:
            log("kept /%s: a symlink (the image manages it)" % entry.path)
            continue
        targets.append(Target(entry, path, kind, st))
    if backup_dir is None:
        no_symlink_parents(root, join(STATE_DIR, "backup", manifest.uuid, "x"))
    backup = Backup(root, manifest.uuid, backup_dir)
    backup.installed = len(targets)
    done: list[str] = []
    staged: list[str] = []
    try:
        for t in targets:
            backup.save(t.entry.path, t.path, t.kind)
        stage_files(targets, staged, dirs)
        for t, tmp in zip(targets, staged):
            posix.rename(tmp, t.path)
            done.append(t.entry.path)
            log("installed /%s (%d bytes)" % (t.entry.path, len(t.entry.data)))
            if callable(after_each):
                after_each(t.entry.path)
    except (OSError, AgentError) as exc:
        log("install failed (%s): rolling back %d file(s)" % (exc, len(done)))
        for tmp in staged[len(done):]:
            try:
                posix.unlink(tmp)
            except OSError:
                pass
        failed = []
        for rel in reversed(done):
            try:
                backup.restore(root, rel)
            except OSError as rexc:
                failed.append(rel)
                log("rollback of /%s failed: %s" % (rel, rexc))
        raise AgentError("install failed: %s%s" % (
            exc, "; rollback FAILED for /%s" % ", /".join(failed) if failed else
            "; every file is as it was")) from None
    return backup


# -- NIC renames --------------------------------------------------------------------------

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFNAME = 0x8923
IFF_UP = 0x1


class Netdev:
    """Kernel NIC operations through ioctls on a socket of this network namespace
    (the same calls ``ip link set`` makes, without a subprocess)."""

    def __init__(self) -> None:
        # _socket and fcntl are built in; the socket module would import enum and
        # selectors on the boot path.
        import _socket

        self.sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)

    def close(self) -> None:
        self.sock.close()

    def _ioctl(self, req: int, name: str, payload: bytes) -> bytes:
        import fcntl

        ifr = struct.pack("16s", name.encode()) + payload.ljust(24, b"\x00")
        return fcntl.ioctl(self.sock.fileno(), req, ifr)

    def flags(self, name: str) -> int:
        return int(struct.unpack_from("H", self._ioctl(SIOCGIFFLAGS, name, b""), 16)[0])

    def set_up(self, name: str, up: bool) -> None:
        flags = self.flags(name)
        flags = (flags | IFF_UP) if up else (flags & ~IFF_UP)
        self._ioctl(SIOCSIFFLAGS, name, struct.pack("H", flags))

    def rename(self, old: str, new: str) -> None:
        self._ioctl(SIOCSIFNAME, old, struct.pack("16s", new.encode()))


def current_names(sysfs: str) -> dict[str, str]:
    """MAC -> current interface name, read from /sys/class/net."""
    out: dict[str, str] = {}
    base = join(sysfs, "class/net")
    try:
        names = posix.listdir(base)
    except OSError:
        return out
    for name in names:
        try:
            mac = read_small(join(base, name, "address"), 128)
        except OSError:
            continue
        out[mac.decode("ascii", "replace").strip().lower()] = name
    return out


def plan_renames(wanted: list[tuple[str, str]], current: dict[str, str]
                 ) -> list[tuple[str, str]]:
    """(old, new) pairs that bring every present NIC to its pinned name.

    Raises AgentError if a pinned name is held by a NIC the manifest does not know.
    """
    owners = {name: mac for mac, name in current.items()}
    ours = {mac for _, mac in wanted}
    moves = []
    for name, mac in wanted:
        have = current.get(mac)
        if have is None or have == name:
            continue
        holder = owners.get(name)
        if holder is not None and holder not in ours:
            raise AgentError("cannot rename %s (%s) to %s: %s is held by %s, a NIC the "
                             "manifest does not list" % (have, mac, name, name, holder))
        moves.append((have, name))
    return moves


def rename_nics(wanted: list[tuple[str, str]], sysfs: str, log: Log,
                netdev: "Netdev | None" = None) -> int:
    """Rename NICs via temporary names (so eth0 <-> eth1 swaps work); links are down
    while renamed and come back up if they were up. All-or-nothing: on error, every
    NIC gets its old name back."""
    moves = plan_renames(wanted, current_names(sysfs))
    if not moves:
        log("NIC names already match the manifest")
        return 0
    nd = netdev or Netdev()
    was_up: dict[str, bool] = {}
    renamed: list[tuple[str, str]] = []  # (from, to) applied, for rollback
    try:
        for k, (old, _new) in enumerate(moves):
            was_up[old] = bool(nd.flags(old) & IFF_UP)
            if was_up[old]:
                nd.set_up(old, False)
            tmp = "nitmp%d" % k
            nd.rename(old, tmp)
            renamed.append((old, tmp))
        for k, (old, new) in enumerate(moves):
            nd.rename("nitmp%d" % k, new)
            renamed.append(("nitmp%d" % k, new))
            log("renamed %s -> %s" % (old, new))
        for old, new in moves:
            if was_up.get(old):
                nd.set_up(new, True)
    except OSError as exc:
        for frm, to in reversed(renamed):
            try:
                nd.rename(to, frm)
            except OSError:
                pass
        for old, up in was_up.items():
            if up:
                try:
                    nd.set_up(old, True)
                except OSError:
                    pass
        raise AgentError("NIC rename failed (%s); names restored"
                         % posix.strerror(exc.errno or 5)) from None
    finally:
        if netdev is None:
            nd.close()
    return len(moves)


# -- the boot service ---------------------------------------------------------------------


def read_state(root: str) -> list[str]:
    """/var/lib/netinject/instance-id: the applied instance uuid, the drive it came from
    ('vfat:<serial>') and the device it was on, one per line (one small file: one read
    on later boots)."""
    try:
        no_symlink_parents(root, join(STATE_DIR, "instance-id"))
        return read_small(join(root, STATE_DIR, "instance-id")).decode(
            "ascii", "replace").split()
    except (OSError, AgentError):
        return []


def run(root: str = "/", sysfs: "str | None" = None, dev: "str | None" = None,
        drive: "str | None" = None, wait: float = DEFAULT_WAIT, quiet: bool = False,
        after_each: object = None, started: "float | None" = None,
        cpu_started: "float | None" = None) -> int:
    """The boot service. Always returns 0: boot goes on whatever happens here.

    ``started``: time.monotonic() when the launcher began (the interpreter is up), so the
    log's timings include loading this module; else they start here.
    """
    log = Log(root, quiet, started, cpu_started)
    if started is not None:
        log("netinject-guest %s loaded" % VERSION)
    sysfs = sysfs or join(root, "sys")
    dev = dev or join(root, "dev")
    found: Drive | None = None
    try:
        state = read_state(root)
        recorded = state[0] if state else None
        if drive:
            found = probe_label(drive)
        elif len(state) >= 3 and state[1].startswith("vfat:") and lexists(
                join(dev, "disk/by-uuid", _fat_uuid(state[1][5:]))):
            # udev already probed a drive with the recorded serial: no device read at all.
            found = Drive(state[2], "vfat", state[1][5:])
        elif len(state) >= 3 and state[2].startswith("/"):
            # Later boots: try the device the drive was on last time first (one read).
            last = probe_label(join(root, state[2].lstrip("/")))
            if last is not None and last.ident == state[1]:
                found = last
            elif last is not None:
                last.close()
        if found is None and not drive:
            found = probe_by_label(dev) or find_drive(sysfs, dev, wait)
        if found is None:
            log("no config drive (label config-2) found: leaving the image's network "
                "config in place")
            return 0
        if recorded is not None and state[1:2] == [found.ident]:
            # Same drive as the boot that applied it: nothing new (no payload reads).
            log("not the first boot of instance %s (drive %s on %s): nothing to do"
                % (recorded, found.ident, found.path))
            return 0
        log("config drive %s (%s, volume %s)" % (found.path, found.kind, found.volume_id))
        if recorded is not None:
            head = read_payload(found, MANIFEST_NAMES)
            raw = head.get("manifest") or head.get("MANIFEST") or b""
            if manifest_instance(raw) == recorded:
                log("not the first boot of instance %s: nothing to do" % recorded)
                return 0
        payload = read_payload(found)
        manifest = verify(payload)
        log("manifest ok: instance %s, %d file(s), %d NIC(s)"
            % (manifest.uuid, len(manifest.entries), len(manifest.nics)))
        check_origin(sysfs, found, manifest.uuid)
        if recorded == manifest.uuid:
            log("not the first boot of instance %s: nothing to do" % manifest.uuid)
            return 0
        log("first boot of instance %s" % manifest.uuid)
        backup = install(root, manifest, log, after_each)
        try:
            count = rename_nics(manifest.nics, sysfs, log)
        except AgentError:
            log("rolling back installed files")
            for entry in reversed(manifest.entries):
                backup.restore(root, entry.path)
            raise
        # Recorded last, and not fsynced: if a crash loses it, the next boot simply
        # applies the same files again (idempotent; the backups already exist).
        record = join(root, STATE_DIR, "instance-id")
        no_symlink_parents(root, join(STATE_DIR, "instance-id"))
        _remove_stale(record + ".tmp")
        _write_plain(record + ".tmp", ("%s\n%s\n/%s\n" % (
            manifest.uuid, found.ident,
            relative_to(root, found.path))).encode(), 0o644)
        posix.rename(record + ".tmp", record)
        log("done: %d file(s) installed, %d NIC(s) renamed (cpu %.1f ms)"
            % (backup.installed, count, log.cpu_ms()))
    except AgentError as exc:
        log("stepping aside: %s" % exc)
    except Exception as exc:  # never break boot, whatever went wrong
        log("stepping aside after an unexpected error: %s: %s" % (type(exc).__name__, exc))
    finally:
        if found is not None:
            found.close()
        log.flush()
    return 0


# -- hot-plug: one transaction for a running guest -----------------------------------------
#
# The host pipes a bundle (the manifest and the files it lists) into
# ``netinject-guest apply --txid T`` through qemu-guest-agent's guest-exec. The files are
# installed with the same checks, backups and rollback as a first boot, under a lock, and
# the outcome is recorded against T. If the host loses the reply (the agent was killed,
# stopped or restarted), ``apply-status --txid T`` tells it what happened, and fences T
# off if it has not run yet: a late-arriving apply of T then does nothing. So the host
# always learns the truth and the guest's files are either all old or all new.

BUNDLE_MAGIC = b"netinject-bundle 1\n"
BUNDLE_MAX = 8 * MAX_FILE
APPLY_LOCK = STATE_DIR + "/apply.lock"
APPLY_STATUS = STATE_DIR + "/apply-status"
APPLY_BACKUP = STATE_DIR + "/apply-backup"
APPLY_STATUS_KEEP = 32
APPLY_OK, APPLY_UNCHANGED, APPLY_BROKEN = 0, 1, 3


def bundle(files: "list[tuple[str, bytes]]") -> bytes:
    """The stdin of ``apply``: the magic line, then per file 'file NAME SIZE\n' + bytes."""
    out = [BUNDLE_MAGIC]
    for name, data in files:
        out.append(("file %s %d\n" % (name, len(data))).encode("ascii"))
        out.append(data)
    return b"".join(out)


def parse_bundle(raw: bytes) -> "dict[str, bytes]":
    if not raw.startswith(BUNDLE_MAGIC):
        raise AgentError("not a netinject bundle")
    files: dict[str, bytes] = {}
    pos = len(BUNDLE_MAGIC)
    while pos < len(raw):
        end = raw.find(b"\n", pos, pos + 200)
        if end < 0:
            raise AgentError("bundle: bad record at byte %d" % pos)
        fields = raw[pos:end].decode("ascii", "replace").split(" ")
        if len(fields) != 3 or fields[0] != "file" or not is_plain_name(fields[1]) \
                or not fields[2].isdigit() or not fields[2].isascii() \
                or len(fields[2]) > 8 or fields[1] in files:
            raise AgentError("bundle: bad record at byte %d" % pos)
        size = int(fields[2])
        if size > MAX_FILE:
            raise AgentError("bundle: %s is too large (%d bytes)" % (fields[1], size))
        data = raw[end + 1:end + 1 + size]
        if len(data) != size:
            raise AgentError("bundle: %s is truncated" % fields[1])
        files[fields[1]] = data
        pos = end + 1 + size
    return files


def _read_all(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = posix.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise AgentError("input over %d bytes" % limit)
        chunks.append(chunk)


class ApplyLock:
    """flock on /var/lib/netinject/apply.lock: one apply or apply-status at a time."""

    def __init__(self, root: str) -> None:
        no_symlink_parents(root, APPLY_LOCK)
        makedirs(join(root, STATE_DIR), 0o700)
        self.fd = posix.open(join(root, APPLY_LOCK), posix.O_RDWR | posix.O_CREAT
                             | posix.O_NOFOLLOW | posix.O_NONBLOCK | posix.O_CLOEXEC, 0o600)
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def close(self) -> None:
        posix.close(self.fd)  # releases the lock


def read_apply_status(root: str) -> "list[tuple[str, str]]":
    try:
        text = read_small(join(root, APPLY_STATUS), 65536).decode("ascii", "replace")
    except OSError:
        return []
    out = []
    for line in text.split("\n"):
        txid, _, outcome = line.partition(" ")
        if txid and outcome:
            out.append((txid, outcome))
    return out


def record_apply_status(root: str, txid: str, outcome: str) -> None:
    entries = [e for e in read_apply_status(root) if e[0] != txid]
    entries.append((txid, outcome))
    text = "".join("%s %s\n" % e for e in entries[-APPLY_STATUS_KEEP:])
    write_atomic(join(root, APPLY_STATUS), text.encode("ascii", "replace"), 0o600)


def _drop_backup(backup: Backup) -> None:
    for name in (posix.listdir(backup.dir) if isdir(backup.dir) else []):
        posix.unlink(join(backup.dir, name))
    try:
        posix.rmdir(backup.dir)
    except OSError:
        pass


def _recover(root: str, log: Log) -> None:
    """Roll back an apply that was interrupted midway (its backup is still there)."""
    directory = join(root, APPLY_BACKUP)
    if not isdir(directory):
        return
    backup = Backup(root, "", directory)
    for rel in backup.index:
        backup.restore(root, rel)
    log("rolled back an interrupted apply (%d file(s))" % len(backup.index))
    _drop_backup(backup)


def apply(root: str, sysfs: str, txid: str, raw: bytes, log: Log) -> "tuple[int, str]":
    """Install a bundle as one transaction; (exit status, outcome recorded for txid)."""
    if not is_plain_name(txid) or len(txid) > 64:
        return APPLY_UNCHANGED, "refused: bad transaction id"
    lock = ApplyLock(root)
    try:
        known = dict(read_apply_status(root))
        if txid in known:
            outcome = known[txid]
            log("transaction %s already ended: %s" % (txid, outcome))
            return (APPLY_OK if outcome == "applied" else APPLY_UNCHANGED), outcome
        _recover(root, log)
        try:
            manifest = verify(parse_bundle(raw))
            try:
                system = read_small(join(sysfs, "class/dmi/id/product_uuid"), 64).decode(
                    "ascii", "replace").strip().lower()
            except OSError:
                raise AgentError("cannot read the system UUID") from None
            if system != manifest.uuid:
                raise AgentError("the bundle is for instance %s, not this machine (%s)"
                                 % (manifest.uuid, system))
            backup = install(root, manifest, log, backup_dir=join(root, APPLY_BACKUP))
        except AgentError as exc:
            outcome = "unchanged: %s" % exc
            status = APPLY_BROKEN if "rollback FAILED" in str(exc) else APPLY_UNCHANGED
            record_apply_status(root, txid, outcome.replace("\n", " "))
            log("apply %s: %s" % (txid, outcome))
            if status == APPLY_BROKEN:
                return status, "broken: %s" % exc
            _recover(root, log)
            return status, outcome
        record_apply_status(root, txid, "applied")
        _drop_backup(backup)
        log("apply %s: %d file(s) installed" % (txid, backup.installed))
        return APPLY_OK, "applied"
    finally:
        lock.close()


def apply_status(root: str, txid: str, log: Log) -> "tuple[int, str]":
    """The outcome of transaction ``txid``; if it has not run, fence it off for good."""
    if not is_plain_name(txid) or len(txid) > 64:
        return APPLY_UNCHANGED, "refused: bad transaction id"
    lock = ApplyLock(root)
    try:
        known = dict(read_apply_status(root))
        if txid in known:
            outcome = known[txid]
        else:
            _recover(root, log)
            outcome = "cancelled: never ran"
            record_apply_status(root, txid, outcome)
            log("transaction %s cancelled before it ran" % txid)
        return (APPLY_OK if outcome == "applied" else APPLY_UNCHANGED), outcome
    finally:
        lock.close()


def _apply_main(cmd: str, root: str, sysfs: "str | None", txid: str) -> int:
    log = Log(root, quiet=True)
    sysfs = sysfs or join(root, "sys")
    try:
        if cmd == "apply":
            raw = _read_all(0, BUNDLE_MAX)
            status, outcome = apply(root, sysfs, txid, raw, log)
        else:
            status, outcome = apply_status(root, txid, log)
    except (OSError, AgentError) as exc:
        status, outcome = APPLY_BROKEN, "error: %s" % exc
        log("%s %s: %s" % (cmd, txid, outcome))
    finally:
        log.flush()
    try:
        sys.stdout.write("netinject-%s %s %s\n" % (cmd, txid, outcome))
        sys.stdout.flush()
    except OSError:
        pass  # the host's end is gone: the outcome is recorded for apply-status
    return status


# -- install into an image ----------------------------------------------------------------

UNIT_NAME = "netinject.service"
UNIT = """\
[Unit]
Description=netinject: install the injected static network config from the config drive
Documentation=file:/usr/lib/netinject/netinject_guest.py
DefaultDependencies=no
Wants=network-pre.target
After=systemd-udevd.service systemd-udev-trigger.service systemd-remount-fs.service
After=local-fs.target
Before=network-pre.target networking.service systemd-networkd.service NetworkManager.service
Before=shutdown.target
Conflicts=shutdown.target
ConditionPathExists=/usr/sbin/netinject-guest

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/netinject-guest run
# On the boot's critical path (networking waits for it) while udev, journald and friends
# compete for the CPU: let it finish first. (Not real-time: the agent parses data from
# the host, and a looping bug at real-time priority would stall a 1-vCPU guest's boot.)
Nice=-10
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=30

[Install]
WantedBy=multi-user.target
"""

INIT_SCRIPT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          netinject
# Required-Start:    mountkernfs $local_fs
# Required-Stop:
# Should-Start:      udev
# X-Start-Before:    networking
# Default-Start:     S
# Default-Stop:
# Short-Description: Install injected static network config before networking
# Description:       Reads the config drive (label config-2) and, on the instance's
#                    first boot, installs its network files and renames NICs.
### END INIT INFO

case "$1" in
  start)
    [ -x /usr/sbin/netinject-guest ] && /usr/sbin/netinject-guest run
    ;;
  stop|restart|force-reload|status)
    ;;
  *)
    echo "Usage: /etc/init.d/netinject {start|stop}" >&2
    exit 3
    ;;
esac
exit 0
"""

LAUNCHER = """\
#!/usr/bin/python3 -IS
# netinject-guest: the boot service's launcher (the agent: ../lib/netinject/).
import time
started = time.monotonic()
cpu_started = time.process_time()
import posix
import sys

args = sys.argv[1:]
# Later boots are decided here, with built-in modules only, so they do not load the
# agent: if udev linked the drive the recorded boot applied ('vfat:<serial>' in the
# state file) in /dev/disk/by-uuid, nothing is new. Everything else goes to the agent.
root = args[2].rstrip("/") if args[:2] == ["run", "--root"] and len(args) == 3 else ""
if args == ["run"] or root:
    try:
        fd = posix.open(root + "/var/lib/netinject/instance-id",
                        posix.O_RDONLY | posix.O_NONBLOCK | posix.O_NOFOLLOW)
        try:
            state = posix.read(fd, 4096).decode("ascii").split()
        finally:
            posix.close(fd)
        if len(state) == 3 and state[1].startswith("vfat:") and len(state[1]) == 13:
            serial = state[1][5:].upper()
            posix.lstat("%s/dev/disk/by-uuid/%s-%s" % (root, serial[:4], serial[4:]))
            line = ("netinject: [%7.1f ms] not the first boot of instance %s (drive %s on "
                    "%s): nothing to do\\n" % ((time.monotonic() - started) * 1000,
                                               state[0], state[1], state[2]))
            fd = posix.open(root + "/var/log/netinject.log", posix.O_WRONLY | posix.O_APPEND
                            | posix.O_CREAT | posix.O_NOFOLLOW | posix.O_NONBLOCK, 0o644)
            try:
                posix.write(fd, line.encode())
            finally:
                posix.close(fd)
            sys.stderr.write(line)
            sys.exit(0)
    except (OSError, UnicodeError):
        pass  # the agent decides, and logs why
    # Not a later boot: start reading the config drive udev linked, so its first 256 KiB
    # (boot sector, FAT, root directory and the payload netinject writes right after it)
    # arrive while the agent loads. The descriptor stays open until the agent is done:
    # a block device's page cache is dropped when its last descriptor closes.
    for label in ("config-2", "CONFIG-2"):
        try:
            drive_fd = posix.open(root + "/dev/disk/by-label/" + label,
                                  posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK)
        except OSError:
            continue
        try:
            posix.posix_fadvise(drive_fd, 0, 1 << 18, posix.POSIX_FADV_WILLNEED)
        except (OSError, AttributeError):
            pass
        break
prefix = sys.argv[0].rpartition("/sbin/")[0]  # /usr, or an image tree's usr
sys.path.insert(0, prefix + "/lib/netinject" if prefix else "/usr/lib/netinject")
import netinject_guest
sys.exit(netinject_guest.main(started=started, cpu_started=cpu_started))
"""

MODULE_PATH = "usr/lib/netinject/netinject_guest.py"
LAUNCHER_PATH = "usr/sbin/netinject-guest"
UNIT_PATH = "lib/systemd/system/" + UNIT_NAME
WANTS_LINK = "etc/systemd/system/multi-user.target.wants/" + UNIT_NAME
INIT_PATH = "etc/init.d/netinject"
RCS_LINK = "etc/rcS.d/S01netinject"
GENERATOR_RULES = "lib/udev/rules.d/75-persistent-net-generator.rules"
GENERATOR_OVERRIDE = "etc/udev/rules.d/75-persistent-net-generator.rules"
KVM_EXCLUSION = r'^(ENV\{MATCHADDR\}=="\?\[2367abef\]:\*",\s*)ENV\{MATCHADDR\}=""'


def own_source() -> bytes:
    """This module's source (also when running from a zipapp)."""
    loader = globals().get("__loader__")
    get_data = getattr(loader, "get_data", None)
    if get_data is not None:
        return bytes(get_data(__file__))
    with open(__file__, "rb") as fh:
        return fh.read()


def uses_systemd(root: str) -> bool:
    init = join(root, "sbin/init")
    if islink(init):
        return "systemd" in posix.readlink(init)
    return exists(join(root, "lib/systemd/systemd")) and not exists(
        join(root, "sbin/init"))


def fix_generator(root: str) -> "str | None":
    """The seed's Debian fix: let the persistent-net generator honour KVM NICs."""
    for rel in (GENERATOR_OVERRIDE, GENERATOR_RULES):
        path = join(root, rel)
        if not isfile(path):
            continue
        with open(path) as fh:
            text = fh.read()
        if "globally_administered_whitelist" not in text:
            return None
        import re

        fixed = re.sub(KVM_EXCLUSION, r'\1GOTO="globally_administered_whitelist"', text,
                       flags=re.MULTILINE)
        if fixed == text:
            return None
        write_atomic(join(root, GENERATOR_OVERRIDE), fixed.encode(), 0o644)
        return GENERATOR_OVERRIDE
    return None


def _symlink(target: str, link: str) -> None:
    makedirs(dirname(link))
    if lexists(link):
        posix.unlink(link)
    posix.symlink(target, link)


def precompile(root: str) -> "str | None":
    """Byte-compile the installed module when the image's Python has this interpreter's
    bytecode format (same minor version), so no boot pays for compiling it."""
    tag = "python%d.%d" % sys.version_info[:2]
    if root != "/" and not isdir(join(root, "usr/lib", tag)):
        return None
    import py_compile

    src = join(root, MODULE_PATH)
    cfile = join(dirname(src), "__pycache__",
                         "netinject_guest.%s.pyc" % sys.implementation.cache_tag)
    py_compile.compile(src, cfile=cfile, dfile="/" + MODULE_PATH, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    return cfile


def install_agent(root: str, out: "Callable[[str], None]") -> int:
    r = root
    write_atomic(join(r, MODULE_PATH), own_source(), 0o644)
    try:
        cfile = precompile(r)
    except (OSError, SyntaxError) as exc:
        cfile = None
        out("could not precompile the agent (%s); it compiles on first use" % exc)
    write_atomic(join(r, LAUNCHER_PATH), LAUNCHER.encode(), 0o755)
    write_atomic(join(r, UNIT_PATH), UNIT.encode(), 0o644)
    write_atomic(join(r, INIT_PATH), INIT_SCRIPT.encode(), 0o755)
    # The state and backup directories exist before the first boot: two mkdirs fewer on
    # the boot path.
    makedirs(join(r, STATE_DIR, "backup"), 0o700)
    out("installed /%s, /%s, /%s, /%s" % (MODULE_PATH, LAUNCHER_PATH, UNIT_PATH, INIT_PATH))
    if cfile:
        out("precompiled /%s" % relative_to(r, cfile))
    if uses_systemd(r):
        _symlink("/" + UNIT_PATH, join(r, WANTS_LINK))
        out("enabled %s (systemd)" % UNIT_NAME)
    else:
        # insserv orders rcS by the LSB header; with --root we place the link ourselves
        # at the front of rcS (X-Start-Before: networking holds trivially).
        _symlink("../init.d/netinject", join(r, RCS_LINK))
        out("enabled /%s (sysvinit rcS)" % RCS_LINK)
    fixed = fix_generator(r)
    if fixed:
        out("applied the KVM persistent-net fix in /%s" % fixed)
    return 0


def uninstall_agent(root: str, out: "Callable[[str], None]") -> int:
    cache = join(root, dirname(MODULE_PATH), "__pycache__")
    compiled = [relative_to(root, join(cache, f))
                for f in (posix.listdir(cache) if isdir(cache) else [])
                if f.startswith("netinject_guest.")]
    for rel in (WANTS_LINK, RCS_LINK, UNIT_PATH, INIT_PATH, LAUNCHER_PATH, MODULE_PATH,
                *compiled):
        path = join(root, rel)
        if lexists(path):
            posix.unlink(path)
            out("removed /%s" % rel)
    # Directories go only when empty: recorded state and backups of a booted image stay.
    for d in (cache, join(root, dirname(MODULE_PATH)),
              join(root, STATE_DIR, "backup"), join(root, STATE_DIR)):
        try:
            posix.rmdir(d)
        except OSError:
            pass
    override = join(root, GENERATOR_OVERRIDE)
    if isfile(override):
        with open(override) as fh:
            if 'GOTO="globally_administered_whitelist"' in fh.read():
                posix.unlink(override)
                out("removed /%s" % GENERATOR_OVERRIDE)
    return 0


class Printer:
    def __call__(self, msg: str) -> None:
        print(msg)


# -- command line -------------------------------------------------------------------------


RUN_OPTIONS = {"--root": "root", "--sysfs": "sysfs", "--dev": "dev", "--drive": "drive",
               "--wait": "wait"}


def _fast_run_args(argv: list[str]) -> "dict[str, object] | None":
    """Parse ``run [--opt VALUE]... [--quiet]`` without argparse (it costs tens of ms
    under emulation on the boot path). None for anything else: argparse handles it."""
    if not argv or argv[0] != "run":
        return None
    out: dict[str, object] = {}
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--quiet":
            out["quiet"] = True
            i += 1
            continue
        key, eq, value = arg.partition("=")
        if key not in RUN_OPTIONS:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        if key == "--wait":
            try:
                out["wait"] = float(value)
            except ValueError:
                return None
        else:
            out[RUN_OPTIONS[key]] = value
        i += 1
    return out


def main(argv: "list[str] | None" = None, started: "float | None" = None,
         cpu_started: "float | None" = None) -> int:
    """``started``, ``cpu_started``: time.monotonic() and time.process_time() when the
    launcher began, for the run log."""
    args_list = sys.argv[1:] if argv is None else argv
    fast = _fast_run_args(args_list)
    if fast is not None:
        return run(started=started, cpu_started=cpu_started, **fast)  # type: ignore[arg-type]
    import argparse

    p = argparse.ArgumentParser(
        prog="netinject-guest",
        description="netinject's guest agent: installs the static network config injected "
                    "on the config drive, before the guest's network service starts.")
    p.add_argument("--version", action="version", version="netinject-guest " + VERSION)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    r = sub.add_parser("run", help="the boot service (always exits 0)")
    r.add_argument("--root", default="/", help="guest root (default /)")
    r.add_argument("--sysfs", help="sysfs to read (default ROOT/sys)")
    r.add_argument("--dev", help="device directory (default ROOT/dev)")
    r.add_argument("--drive", help="read this device or image instead of searching")
    r.add_argument("--wait", type=float, default=DEFAULT_WAIT,
                   help="seconds to wait for the drive to appear (default %(default)s)")
    r.add_argument("--quiet", action="store_true", help="log to the file only")
    for name, helptext in (("apply", "install a bundle from stdin as one transaction "
                                     "(NIC hot-plug; exit 0 applied, 1 unchanged, 3 broken)"),
                           ("apply-status", "the outcome of a transaction; fences it off if "
                                            "it has not run")):
        ap = sub.add_parser(name, help=helptext)
        ap.add_argument("--txid", required=True, help="transaction id (letters, digits)")
        ap.add_argument("--root", default="/", help="guest root (default /)")
        ap.add_argument("--sysfs", help="sysfs to read (default ROOT/sys)")
    for name, helptext in (("install", "make this image run the agent at boot"),
                           ("uninstall", "remove what install added")):
        i = sub.add_parser(name, help=helptext)
        i.add_argument("--root", default="/", help="image root (default: this system)")
    args = p.parse_args(args_list)
    if args.cmd == "run":
        return run(args.root, args.sysfs, args.dev, args.drive, args.wait, args.quiet,
                   started=started, cpu_started=cpu_started)
    if args.cmd in ("apply", "apply-status"):
        return _apply_main(args.cmd, args.root, args.sysfs, args.txid)
    if args.cmd == "install":
        return install_agent(args.root, Printer())
    if args.cmd == "uninstall":
        return uninstall_agent(args.root, Printer())
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
