"""The config drive: an OpenStack-layout filesystem image carrying the netinject payload.

Layout (readable by any config-drive consumer: cloud-init, glean, our agent)::

    openstack/latest/meta_data.json     uuid, hostname, name, launch_index, availability_zone
    openstack/latest/network_data.json  nova's format, from the same model
    openstack/latest/vendor_data.json   {}
    netinject/manifest                  only for images with support_inject_ip
    netinject/<name>                    the rendered files the manifest lists (each
                                        entry: guest path, source name, mode, sha256)

Unlike nova, network_data.json lists every known address as a static network (with its
routes and the link MTU) even when its subnet has DHCP enabled: whichever agent the guest
runs, it need not wait on DHCP.

vfat images are written by netinject.vfat (in-process: the image mkfs.fat + mtools make,
byte for byte, without starting them; they remain the path for forced FAT sizes and
images past FAT16), iso9660 with pycdlib: no root, no loop mount, no kernel vfat driver.
Builds are reproducible: fixed timestamps, entries written in sorted order, the volume id
derived from the instance uuid.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid as uuidlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from time import struct_time
from typing import Any, Literal
from xml.etree import ElementTree as ET

from . import __version__, vfat
from .errors import MISSING, FieldError, InvalidInput, NetinjectError
from .guest import contract
from .hostio import staged_file
from .model import AddrMode, Instance, Nic
from .render import FORMATS, Files, Options, render_all
from .render.base import nic_routes
from .sources import network_data

LABEL = contract.LABELS[0]
MANIFEST_FORMAT = contract.MANIFEST_FORMAT
PAYLOAD_DIR = PurePosixPath(contract.PAYLOAD_DIR)
MANIFEST_PATH = PAYLOAD_DIR / contract.MANIFEST_NAME
OPENSTACK_DIR = PurePosixPath("openstack/latest")
DEFAULT_SIZE = 64 * 1024 * 1024  # nova's vfat config drive size
FIXED_EPOCH = 1262304000  # 2010-01-01T00:00:00Z: every timestamp on the drive

DriveFormat = Literal["vfat", "iso9660"]


class DriveBuildError(NetinjectError):
    """A tool the build needs is missing or failed."""


@dataclass(frozen=True)
class DriveContents:
    files: Mapping[PurePosixPath, bytes]
    payload: bool

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values())

    @property
    def directories(self) -> list[PurePosixPath]:
        """Every directory the files need, parents first, in a fixed order."""
        return sorted({p for path in self.files for p in path.parents if str(p) != "."},
                      key=lambda p: (len(p.parts), str(p)))


# -- what goes on the drive --------------------------------------------------------------


def meta_data(instance: Instance) -> dict[str, Any]:
    """meta_data.json as nova writes it (the keys a guest agent reads)."""
    name = instance.name or (str(instance.hostname) if instance.hostname else None)
    return {
        "uuid": str(instance.uuid),
        "hostname": str(instance.hostname) if instance.hostname else None,
        "name": name,
        "launch_index": instance.launch_index,
        "availability_zone": instance.availability_zone,
        "public_keys": {},
        "meta": {},
        "files": [],
        "devices": [],
    }


def source_names(files: Files) -> dict[PurePosixPath, str]:
    """The payload's on-drive name for each guest path: its base name, made unique.

    The payload sits flat in netinject/ (one directory: fewer mtools calls, and nothing
    for the guest to walk); the manifest maps each name back to its guest path.
    """
    names: dict[PurePosixPath, str] = {}
    taken = {MANIFEST_PATH.name}
    for path in sorted(files):
        name, n = path.name, 1
        while name in taken:
            n += 1
            name = f"{path.name}.{n}"
        taken.add(name)
        names[path] = name
    return names


def manifest(instance: Instance, files: Files, style: str) -> str:
    """What the guest agent may install (the contract's grammar: see
    ``contract.format_manifest``): each file's guest path, source name, mode and sha256,
    and each NIC's pinned name and MAC with what its config brings up (nic_facts)."""
    names = source_names(files)
    return contract.format_manifest(
        str(instance.uuid), style, f"netinject {__version__}",
        [(str(path), names[path], contract.file_mode(str(path)),
          hashlib.sha256(content.encode()).hexdigest())
         for path, content in sorted(files.items())],
        [(nic.name, str(nic.mac)) for nic in instance.nics],
        [(nic.name, str(a.interface.ip)) for nic in instance.nics for a in nic.addresses
         if a.version == 4 and a.is_static and a.interface is not None],
        [nic_facts(instance, nic) for nic in instance.nics])


_MODES = {(AddrMode.DHCP, 4): "dhcp4", (AddrMode.DHCP, 6): "dhcp6",
          (AddrMode.SLAAC, 6): "slaac", (AddrMode.DHCPV6_STATELESS, 6): "dhcpv6-stateless"}


def nic_facts(instance: Instance, nic: Nic) -> contract.NicFacts:
    """What the NIC's config brings up, as every stack's renderer writes it: MTU, its
    addresses, its routes (render.base.nic_routes: the family's default route where it
    carries it, host routes) and the DNS servers on the NIC that carries them."""
    facts = contract.NicFacts(nic.name, str(nic.mac))
    facts.mtu = nic.mtu
    for a in nic.addresses:
        if a.is_static and a.interface is not None:
            facts.addrs.append(str(a.interface))
        elif (a.mode, a.version) in _MODES:
            facts.addrs.append(_MODES[(a.mode, a.version)])
    for dest, gateway in nic_routes(instance, nic):
        default = "0.0.0.0/0" if gateway.version == 4 else "::/0"
        facts.routes.append((str(dest) if dest is not None else default, str(gateway)))
    if instance.dns_nic() is nic:
        facts.dns = [str(d) for d in instance.dns]
    return facts


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def payload_files(instance: Instance, options: Options | None = None,
                  formats: tuple[str, ...] = FORMATS) -> dict[str, bytes]:
    """The netinject payload by on-drive name: ``manifest`` and each rendered file (the
    drive's netinject/ directory; the vendordata service's answer carries the same).
    Checked against the agent's limits."""
    opts = options or Options()
    rendered = render_all(instance, formats, opts)
    # format_manifest refuses any path outside the guest agent's allowlist.
    files = {MANIFEST_PATH.name: manifest(instance, rendered, opts.style.value).encode()}
    for path, name in source_names(rendered).items():
        files[name] = rendered[path].encode()
    check_limits({PAYLOAD_DIR / name: data for name, data in files.items()})
    return files


USER_DATA_MAX = 65535
"""nova's limit on user data (the API takes at most 65535 bytes, base64-encoded)."""


def contents(instance: Instance, options: Options | None = None,
             formats: tuple[str, ...] = FORMATS, user_data: bytes | None = None
             ) -> DriveContents:
    """The drive's files. ``user_data``: the instance's user data, as nova puts it in
    openstack/latest/user_data (for cloud-init beside the agent); opaque bytes."""
    files: dict[PurePosixPath, bytes] = {
        OPENSTACK_DIR / "meta_data.json": _json(meta_data(instance)),
        OPENSTACK_DIR / "network_data.json": _json(network_data.dump(instance)),
        OPENSTACK_DIR / "vendor_data.json": _json({}),
    }
    if user_data is not None:
        if len(user_data) > USER_DATA_MAX:
            raise InvalidInput([FieldError(
                "--user-data", f"{len(user_data)} bytes",
                f"is over nova's limit of {USER_DATA_MAX} bytes")])
        files[OPENSTACK_DIR / "user_data"] = user_data
    if instance.inject:
        for name, data in payload_files(instance, options, formats).items():
            files[PAYLOAD_DIR / name] = data
    return DriveContents(files, instance.inject)


def check_limits(files: Mapping[PurePosixPath, bytes]) -> None:
    """Refuse (InvalidInput, exit 2) a payload the guest agent would refuse at boot: the
    limit is the agent's own constant, so the two sides cannot disagree."""
    errors = [FieldError(
        f"drive:{path}", MISSING,
        f"is {len(data)} bytes, over the guest agent's limit of {contract.MAX_FILE} bytes "
        "per payload file (too many NICs, routes or DNS servers for one instance)")
        for path, data in sorted(files.items())
        if path.parts[0] == PAYLOAD_DIR.name and len(data) > contract.MAX_FILE]
    if errors:
        raise InvalidInput(errors)


def volume_id(instance_uuid: uuidlib.UUID) -> int:
    """A 32-bit volume serial derived from the instance uuid (stable per instance)."""
    return int.from_bytes(hashlib.sha256(instance_uuid.bytes).digest()[:4], "big")


# -- building images ---------------------------------------------------------------------


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/sbin/{name}" if Path(f"/sbin/{name}").exists() else None)
    if path is None:
        raise DriveBuildError(f"{name} not found: install the Debian package {package!r} "
                              "(scripts/setup.sh does)")
    return path


def _run(args: list[str], env: Mapping[str, str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, env=dict(env), check=False,
                          timeout=120)
    if done.returncode != 0:
        raise DriveBuildError(f"{Path(args[0]).name} failed (exit {done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()}")


def _image_size(data: DriveContents) -> int:
    need = data.size + 64 * len(data.files) * 1024 + 4 * 1024 * 1024
    mib = 1024 * 1024
    return max(DEFAULT_SIZE, (need * 5 // 4 + mib - 1) // mib * mib)


def build_vfat(data: DriveContents, out: Path, vol_id: int,
               fat: tuple[int, int] | None = None) -> None:
    """Create ``out`` (which must not exist) as a vfat drive: no root, no mount, no kernel
    vfat driver.

    The image is written in-process by netinject.vfat: byte-identical to what
    mkfs.fat --invariant + mmd + mcopy make from the same contents, without their three
    or more process starts. ``fat``: (FAT size, image KiB) forces FAT12/16/32 (what
    mkfs.fat picks for nova's 64 MiB is FAT16; other tools and sizes give the others,
    which the agent reads too): forced sizes, and a drive so large mkfs.fat would make
    it FAT32, are built by those tools themselves (_build_vfat_tools)."""
    geo = vfat.geometry(_image_size(data)) if fat is None else None
    if geo is None:
        _build_vfat_tools(data, out, vol_id, fat)
        return
    try:
        vfat.write_image(out, data.files, geo, vol_id, LABEL, FIXED_EPOCH)
    except vfat.FatError as exc:
        raise DriveBuildError(f"vfat: {exc}") from None


def _build_vfat_tools(data: DriveContents, out: Path, vol_id: int,
                      fat: tuple[int, int] | None) -> None:
    """mkfs.fat (reproducible) + mtools: one mmd for every directory, one mcopy per
    directory of its files, every clock at FIXED_EPOCH in UTC."""
    mkfs = _tool("mkfs.fat", "dosfstools")
    mmd, mcopy = (_tool(t, "mtools") for t in ("mmd", "mcopy"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MTOOLS_SKIP_CHECK": "1",
           "SOURCE_DATE_EPOCH": str(FIXED_EPOCH), "TZ": "UTC", "LC_ALL": "C"}
    size_kib = _image_size(data) // 1024 if fat is None else fat[1]
    forced = [] if fat is None else ["-F", str(fat[0])]
    with tempfile.TemporaryDirectory(prefix="netinject-drive-") as tmp:
        staging = Path(tmp)
        # --invariant fixes every time-based and random field; the -i after it then
        # sets our volume serial (order matters). Label lower-case, as nova writes it.
        _run([mkfs, "-C", "--invariant", "-i", f"{vol_id:08x}", *forced, "-n", LABEL,
              str(out), str(size_kib)], env)
        if data.directories:
            _run([mmd, "-i", str(out), *(f"::/{d}" for d in data.directories)], env)
        by_dir: dict[PurePosixPath, list[Path]] = {}
        for path, content in sorted(data.files.items()):
            local = staging / path.as_posix()
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(content)
            os.utime(local, (FIXED_EPOCH, FIXED_EPOCH))
            by_dir.setdefault(path.parent, []).append(local)
        for parent, locals_ in sorted(by_dir.items(), key=lambda kv: str(kv[0])):
            _run([mcopy, "-i", str(out), "-m", *map(str, locals_), f"::/{parent}/"], env)


class _StoppedClock:
    """The ``time`` module as pycdlib's own modules see it while it builds: time()
    stopped at ``epoch`` and localtime() read as UTC; everything else the real module."""

    def __init__(self, epoch: int) -> None:
        self._epoch = float(epoch)

    def time(self) -> float:
        return self._epoch

    @staticmethod
    def localtime(secs: float | None = None) -> struct_time:
        return time.gmtime(secs)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


# One ISO build at a time swaps pycdlib's clock: two builds in threads must not restore
# each other's (the second would save the first's stopped clock as the real one).
_PYCDLIB_CLOCK = threading.Lock()


def _pycdlib_modules_reading_time() -> list[types.ModuleType]:
    """pycdlib's modules that hold the ``time`` module as a global (pycdlib.pycdlib,
    headervd, dates, udf, ... in 1.22), found rather than listed: a version that reads
    the clock from another module is covered too."""
    return [m for name, m in list(sys.modules.items())
            if name.partition(".")[0] == "pycdlib" and getattr(m, "time", None) is time]


@contextlib.contextmanager
def _frozen_clock(epoch: int) -> Iterator[None]:
    """pycdlib stamps records with time.time()/localtime() and takes no timestamp of
    ours: while it builds, its modules' own ``time`` name is a stopped UTC clock, so the
    image does not depend on when or in which timezone it was made. The global time
    module is left alone: other threads (the vendordata service's), and this one outside
    pycdlib, keep the real clock."""
    clock = _StoppedClock(epoch)
    with _PYCDLIB_CLOCK:
        modules = _pycdlib_modules_reading_time()
        for module in modules:
            vars(module)["time"] = clock
        try:
            yield
        finally:
            for module in modules:
                vars(module)["time"] = time


def build_iso(data: DriveContents, out: Path, vol_id: int) -> None:
    import pycdlib

    iso = pycdlib.PyCdlib()
    with _frozen_clock(FIXED_EPOCH):
        iso.new(interchange_level=4, joliet=3, rock_ridge="1.09", vol_ident=LABEL,
                vol_set_ident=f"{vol_id:08x}", sys_ident="LINUX")
        for d in data.directories:
            iso.add_directory(_iso_name(d), rr_name=d.name, joliet_path=f"/{d}")
        for path, content in sorted(data.files.items()):
            iso.add_fp(io.BytesIO(content), len(content), _iso_name(path) + ";1",
                       rr_name=path.name, joliet_path=f"/{path}", file_mode=0o100444)
        with out.open("wb") as fh:
            iso.write_fp(fh)
        iso.close()


def _iso_name(path: PurePosixPath) -> str:
    """An ISO9660 level-4 identifier for a path (the contract's iso_name per part; Rock
    Ridge/Joliet keep the real names)."""
    return "/" + "/".join(contract.iso_name(part) for part in path.parts)


@dataclass(frozen=True)
class BuildResult:
    path: Path
    format: DriveFormat
    payload: bool
    size: int
    volume_id: int
    files: tuple[PurePosixPath, ...]


def build(instance: Instance, out: Path, fmt: DriveFormat = "vfat",
          options: Options | None = None, user_data: bytes | None = None) -> BuildResult:
    """Build the drive into a staging file beside ``out`` and rename it into place
    (hostio.staged_file): a failed build leaves no file behind, and a device, FIFO,
    directory or symlink at ``out`` is refused, never replaced or written through."""
    data = contents(instance, options, user_data=user_data)
    vol = volume_id(instance.uuid)
    with staged_file(out, 0o644) as tmp:
        if fmt == "vfat":
            tmp.unlink()  # build_vfat creates the file itself (O_EXCL, as mkfs.fat -C)
            build_vfat(data, tmp, vol)
        else:
            build_iso(data, tmp, vol)
    return BuildResult(out, fmt, data.payload, out.stat().st_size, vol,
                       tuple(sorted(data.files)))


def libvirt_disk_xml(image: Path, target_dev: str = "vdz") -> str:
    """The <disk> element that attaches the drive read-only as a virtio disk."""
    disk = ET.Element("disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="raw", cache="none")
    ET.SubElement(disk, "source", file=str(image.resolve()))
    ET.SubElement(disk, "target", dev=target_dev, bus="virtio")
    ET.SubElement(disk, "readonly")
    ET.SubElement(disk, "serial").text = LABEL
    ET.indent(disk)
    return ET.tostring(disk, encoding="unicode") + "\n"
