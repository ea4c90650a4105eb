"""Finding the config drive, reading its payload, and deciding whether to trust it.

The drive is found through udev's /dev/disk/by-label link, else by probing the whole
block devices the kernel lists in /sys/class/block (smallest first), with a short bounded
wait. Its payload is read straight off the device (see readers). A drive is trusted only
if it is read-only and its manifest names this machine's SMBIOS system UUID.
"""

import os
import stat
import struct
import time

from .contract import (
    LABELS,
    MAX_FILE,
    PAYLOAD_DIR,
    VENDOR_DIR,
    VENDOR_FILE,
    VENDOR_MAX,
    AgentError,
    NoPayload,
    NotOnDrive,
    iso_name,
    lookup,
    vendor_payload,
)
from .paths import basename, dirname, exists, join, normpath, read_small
from .readers import FatReader, IsoReader

DEFAULT_WAIT = 1.0
POLL = 0.05


class Drive:
    """A found config drive: its device, filesystem, label (the FAT volume label or the
    ISO volume identifier, trimmed) and volume id (the FAT serial or the ISO volume set
    id: netinject derives both from the instance uuid; nova leaves the ISO one empty)."""

    def __init__(self, path: str, kind: str, volume_id: str, fd: int = -1,
                 label: str = "") -> None:
        self.path = path
        self.kind = kind
        self.volume_id = volume_id
        self.label = label
        self.fd = fd  # kept open from the probe to the payload read (one open per boot)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def ident(self) -> str:
        return "%s:%s" % (self.kind, self.volume_id)


def open_device(path: str) -> int:
    """A read-only descriptor on a block device (or an image file standing in for one).
    O_NONBLOCK: a FIFO (or a tty) put where a device should be must not hang boot in
    open(); anything but a block device or regular file is refused (OSError)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
        os.close(fd)
        raise OSError(19, "not a block device: %s" % path)
    return fd


def probe_label(dev: str) -> "Drive | None":
    """The drive if the device carries a config-2 label (vfat or iso9660), else None.

    A found drive keeps its file descriptor open for read_payload: closing the last
    descriptor of a block device drops its page cache, so a second open would read the
    boot sector from the device again.
    """
    try:
        fd = open_device(dev)
    except OSError:
        return None
    found = None
    try:
        boot = os.pread(fd, 512, 0)
        if len(boot) == 512 and boot[510:512] == b"\x55\xaa":
            # FAT12/16 keep serial and label at 39/43, FAT32 at 67/71 ("FAT" at 54/82).
            for off, fs_off in ((43, 54), (71, 82)):
                if boot[fs_off:fs_off + 3] == b"FAT":
                    label = boot[off:off + 11].rstrip(b" \x00").decode("ascii", "replace")
                    if label in LABELS:
                        serial = struct.unpack_from("<I", boot, off - 4)[0]
                        found = Drive(dev, "vfat", "%08x" % serial, fd, label)
        if found is None:
            pvd = os.pread(fd, 2048, 32768)
            if pvd[0:6] == b"\x01CD001":
                label = pvd[40:72].rstrip(b" \x00").decode("ascii", "replace")
                if label in LABELS:
                    volset = pvd[190:318].rstrip(b" \x00").decode("ascii", "replace")
                    found = Drive(dev, "iso9660", volset, fd, label)
    except OSError:
        pass
    if found is None:
        os.close(fd)
    return found


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
        st = os.fstat(drive.fd)
        if stat.S_ISBLK(st.st_mode):
            return join(sysfs, "dev/block", "%d:%d" % (os.major(st.st_rdev),
                                                       os.minor(st.st_rdev)), "ro")
    return join(sysfs, "class/block", basename(drive.path), "ro")


def system_uuid(sysfs: str) -> str:
    """The SMBIOS system UUID (lower case), which nova/libvirt set to the instance uuid;
    AgentError when it cannot be read."""
    path = join(sysfs, "class/dmi/id/product_uuid")
    try:
        return read_small(path, 64).decode("ascii", "replace").strip().lower()
    except OSError:
        raise AgentError("cannot read the system UUID (%s): not trusting the drive"
                         % path) from None


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
    system = system_uuid(sysfs)
    if system != uuid.lower():
        raise AgentError("the drive is for instance %s but this machine's system UUID is "
                         "%s: not trusting it" % (uuid, system or "empty"))


def probe_by_label(dev: str) -> "Drive | None":
    """The drive udev already linked as /dev/disk/by-label/config-2, if it did: one
    readlink instead of listing and sizing every block device."""
    for label in LABELS:
        link = join(dev, "disk/by-label", label)
        try:
            target = os.readlink(link)
        except OSError:
            continue
        path = normpath(join(dirname(link), target))
        if not path.startswith(dev.rstrip("/") + "/"):
            continue  # points outside the device directory: not udev's link
        found = probe_label(path)
        if found is not None:
            return found
    return None


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
            names = os.listdir(join(sysfs, "class/block"))
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


def read_payload(drive: Drive, only: "tuple[str, ...] | None" = None) -> dict[str, bytes]:
    """Files of the drive's netinject/ directory (all, or just the names in ``only``),
    read without mounting (on iso9660 the names the kernel would show: see IsoReader); on a
    drive without it (a stock nova's), the payload in openstack/latest/vendor_data2.json.
    NoPayload when there is neither."""
    try:
        if drive.fd < 0:
            drive.fd = open_device(drive.path)
        reader = FatReader(drive.fd) if drive.kind == "vfat" else IsoReader(drive.fd)
        try:
            return reader.read_dir_files(PAYLOAD_DIR, MAX_FILE, only)
        except NotOnDrive:
            pass  # not netinject's drive: nova's own, with the vendordata answer
        try:
            found = reader.read_dir_files(VENDOR_DIR, VENDOR_MAX,
                                          (VENDOR_FILE, iso_name(VENDOR_FILE)))
        except NotOnDrive:
            found = {}
        raw = lookup(found, VENDOR_FILE)
        if raw is None:
            raise NoPayload("no netinject/ directory and no %s/%s on the drive"
                            % (VENDOR_DIR, VENDOR_FILE))
        return vendor_payload(raw)
    except (OSError, struct.error, IndexError, UnicodeError, ValueError,
            ArithmeticError) as exc:
        raise AgentError("cannot read the drive %s: %s" % (drive.path, exc)) from None
