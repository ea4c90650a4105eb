"""``netinject image add-agent DISK``: the guest agent put into an existing Debian disk
image (raw or qcow2), without a kernel mount, a loop device or a VM.

The image's ext4 root filesystem is opened in user space with e2fsprogs' own FUSE driver
(``fuse2fs``); a qcow2 disk is first shown as a raw file by QEMU's own storage daemon
(``qemu-storage-daemon --export type=fuse``). The agent's installer then runs on that
tree exactly as ``netinject-guest.pyz install --root TREE`` does (the same code: every
path looked up inside the image, the stack detected from it).

Checked before the disk is opened for writing (the disk untouched otherwise, exit 2): a
regular file the user can write, raw or qcow2 (``qemu-img info``), an ext4 filesystem on
the whole disk or on one of its partitions (``sfdisk --json``) holding
``/etc/debian_version``; that check mounts read-only. libguestfs (``virt-customize``)
is the other way, for operators who have it: it boots an appliance VM, which under
emulation takes minutes (docs/operator-guide.md gives the one-liner with the ``.deb``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import NetinjectError, UsageError

EXT_MAGIC_OFFSET = 1080  # the superblock's s_magic, 1024 + 0x38
EXT_MAGIC = b"\x53\xef"
TOOLS = {"fuse2fs": "fuse2fs", "qemu-img": "qemu-utils", "sfdisk": "fdisk",
         "qemu-storage-daemon": "qemu-system-common"}


class DiskError(NetinjectError):
    """A tool failed while the disk was open (exit 1)."""


@dataclass(frozen=True)
class Root:
    offset: int   # bytes from the start of the (raw view of the) disk
    where: str    # "the whole disk" or "partition N"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DiskError(f"{name} not found (Debian package {TOOLS[name]}): "
                        "run scripts/setup.sh or install it")
    return path


def _run(args: list[str], what: str, timeout: float = 120) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise DiskError(f"{what} failed (exit {done.returncode}): "
                        f"{(done.stderr or done.stdout).strip()[-400:]}")
    return done.stdout


def disk_format(disk: Path) -> str:
    """raw or qcow2, as qemu-img reads the file (UsageError for anything else)."""
    info = json.loads(_run([_tool("qemu-img"), "info", "--output=json", "--force-share",
                            str(disk)], "qemu-img info"))
    fmt = str(info.get("format"))
    if fmt not in ("raw", "qcow2"):
        raise UsageError(f"DISK: {str(disk)!r} is a {fmt} image; add-agent takes raw or "
                         "qcow2")
    return fmt


def check_disk(disk: Path) -> None:
    """A regular file this user can write (UsageError naming it otherwise)."""
    try:
        st = os.stat(disk)
    except OSError as exc:
        raise UsageError(f"DISK: {str(disk)!r}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"DISK: {str(disk)!r} is not a regular file")
    if not os.access(disk, os.W_OK) or not st.st_mode & 0o222:
        raise UsageError(f"DISK: {str(disk)!r} is read-only: nothing was changed")


@contextlib.contextmanager
def raw_view(disk: Path, fmt: str, writable: bool, tmp: Path) -> Iterator[Path]:
    """The disk as a raw file: itself, or a qcow2 exported through FUSE by
    qemu-storage-daemon (stopped, and its export gone, when the block ends)."""
    if fmt == "raw":
        yield disk
        return
    view = tmp / "raw-view"
    view.touch()
    proc = subprocess.Popen(
        [_tool("qemu-storage-daemon"),
         # (QEMU's key=value syntax: a ',' in the path is written ',,', never an option)
         "--blockdev", f"driver=file,node-name=file,filename={str(disk).replace(',', ',,')}"
                       + ("" if writable else ",read-only=on"),
         "--blockdev", "driver=qcow2,node-name=disk,file=file"
                       + ("" if writable else ",read-only=on"),
         "--export", f"type=fuse,id=exp,node-name=disk,mountpoint={view},"
                     f"writable={'on' if writable else 'off'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while os.stat(view).st_size == 0:  # (the export replaces the empty file)
            if proc.poll() is not None:
                raise DiskError("qemu-storage-daemon could not open the qcow2 disk: "
                                + (proc.stderr.read() if proc.stderr else "").strip()[-400:])
            if time.monotonic() > deadline:
                raise DiskError("qemu-storage-daemon did not export the disk within 30 s")
            time.sleep(0.05)
        yield view
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _has_ext_magic(view: Path, offset: int) -> bool:
    with open(view, "rb") as f:
        f.seek(offset + EXT_MAGIC_OFFSET)
        return f.read(2) == EXT_MAGIC


def candidates(view: Path) -> list[Root]:
    """ext2/3/4 filesystems: on the whole disk, or on a partition (sfdisk's table)."""
    if _has_ext_magic(view, 0):
        return [Root(0, "the whole disk")]
    done = subprocess.run([_tool("sfdisk"), "--json", str(view)], capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode != 0:
        return []
    table = json.loads(done.stdout).get("partitiontable", {})
    sector = int(table.get("sectorsize", 512))
    out = []
    for i, part in enumerate(table.get("partitions", []), 1):
        offset = int(part["start"]) * sector
        if _has_ext_magic(view, offset):
            out.append(Root(offset, f"partition {i}"))
    return out


@contextlib.contextmanager
def mounted(view: Path, root: Root, writable: bool, mnt: Path) -> Iterator[Path]:
    """The filesystem at ``root`` in user space (fuse2fs, in the foreground so its end is
    seen: the filesystem is closed, every block written, only when fuse2fs exits after
    the unmount)."""
    opts = [f"offset={root.offset}"] + ([] if writable else ["ro"])
    proc = subprocess.Popen([_tool("fuse2fs"), str(view), str(mnt), "-f", "-o", ",".join(opts)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                raise DiskError(f"fuse2fs could not open the filesystem on {root.where}: "
                                + (proc.stderr.read() if proc.stderr else "").strip()[-400:])
            if time.monotonic() > deadline:
                raise DiskError(f"fuse2fs did not mount {root.where} within 30 s")
            time.sleep(0.02)
        yield mnt
    finally:
        if proc.poll() is None:
            umount = shutil.which("fusermount3") or shutil.which("fusermount")
            args = [umount, "-u", str(mnt)] if umount else ["umount", str(mnt)]
            subprocess.run(args, capture_output=True, timeout=60, check=False)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise DiskError(f"fuse2fs did not close {root.where} within 120 s") from None
        if proc.returncode not in (0, None) and writable:
            raise DiskError(f"fuse2fs ended with exit {proc.returncode} on {root.where}: "
                            + (proc.stderr.read() if proc.stderr else "").strip()[-400:])


def find_root(disk: Path, fmt: str, tmp: Path) -> Root:
    """The Debian root filesystem (read-only look): UsageError when there is none."""
    with raw_view(disk, fmt, False, tmp) as view:
        found = candidates(view)
        if not found:
            raise UsageError(f"DISK: {str(disk)!r} has no ext4 filesystem (on the whole "
                             "disk or a partition): add-agent takes Debian images with an "
                             "ext4 root")
        for root in found:
            mnt = tmp / "look"
            mnt.mkdir(exist_ok=True)
            with mounted(view, root, False, mnt):
                if (mnt / "etc/debian_version").is_file():
                    return root
        raise UsageError(f"DISK: {str(disk)!r} is not a Debian image (no "
                         f"/etc/debian_version on {', '.join(r.where for r in found)})")


def add_agent(disk: Path, stack: str | None, say: Callable[[str], None]) -> None:
    """Put the boot service into the image (see the module docstring)."""
    from .guest.image import install_agent
    from .guest_bundle import agent_source, launcher_source

    check_disk(disk)
    fmt = disk_format(disk)
    with tempfile.TemporaryDirectory(prefix="netinject-add-agent-") as t:
        tmp = Path(t)
        root = find_root(disk, fmt, tmp)
        say(f"{disk}: {fmt}, Debian root filesystem on {root.where}")
        mnt = tmp / "root"
        mnt.mkdir()
        with raw_view(disk, fmt, True, tmp) as view, mounted(view, root, True, mnt):
            if install_agent(str(mnt), lambda msg: say(f"{disk}: {msg}"), agent_source(),
                             launcher_source(), stack) != 0:
                raise UsageError(f"DISK: {str(disk)!r}: the installer refused the image "
                                 "(above); nothing was installed")
