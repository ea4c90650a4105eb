"""Guest-shaped directory trees and config drives for agent tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from conftest import CASES
from netinject import drive
from netinject.model import Instance
from netinject.render import Options
from netinject.sources.neutron import parse_document

# The interpreter the tests run the agent with: Debian's python3, as in the guest image,
# unless NETINJECT_GUEST_PYTHON names another (scripts/test.sh runs the agent's own tests
# under bullseye's 3.9 and trixie's 3.13 too: netinject.vm.pytree builds them).
GUEST_PYTHON = os.environ.get("NETINJECT_GUEST_PYTHON") or "/usr/bin/python3"


def _version(python: str) -> tuple[int, int]:
    done = subprocess.run([python, "-I", "-S", "-c",
                           "import sys; print('%d %d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True, timeout=60)
    major, minor = done.stdout.split()
    return int(major), int(minor)


# Its version (what install precompiles for: usr/lib/python3.X, cpython-3X.pyc).
GUEST_VERSION = _version(GUEST_PYTHON)


def _shipped() -> tuple[Path, Path]:
    """The joined agent and the bundle exactly as shipped, built once per source state
    (the file name carries a hash of the guest package's sources)."""
    import hashlib
    import tempfile

    from netinject import guest_bundle

    digest = hashlib.sha256(guest_bundle.agent_source() + guest_bundle.image_source().encode()
                            + guest_bundle.launcher_source()
                            + guest_bundle.main_source()).hexdigest()[:12]
    d = Path(tempfile.gettempdir()) / f"netinject-test-agent-{digest}"
    agent, bundle = d / "netinject_guest.py", d / "netinject-guest.pyz"
    if not agent.exists() or not bundle.exists():
        guest_bundle.build(bundle)
        guest_bundle.write_agent(agent)
    return agent, bundle


# The agent as the guest runs it (one joined module: python3 -I -S AGENT run ...), and
# the bundle an image builder uses (python3 BUNDLE install --root IMAGE).
AGENT, BUNDLE = _shipped()

ORIGINAL_ENI = b"auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n"


def instance_doc(case: str = "multi-nic-reordered", **instance: Any) -> Any:
    doc = json.loads((CASES / case / "instance.json").read_text())
    doc["instance"].update(instance)
    return doc


def make_drive(path: Path, doc: Any, fmt: drive.DriveFormat = "vfat",
               mutate_manifest: Any = None, extra: Mapping[str, bytes] | None = None) -> Path:
    """A real drive built by netinject; optionally with a tampered manifest/payload."""
    instance = parse_document(doc).instance
    data = drive.contents(instance, Options())
    files = dict(data.files)
    if mutate_manifest is not None:
        lines = files[drive.MANIFEST_PATH].decode().splitlines()
        lines = mutate_manifest(lines)
        files[drive.MANIFEST_PATH] = ("\n".join(lines) + "\n").encode()
    for name, content in (extra or {}).items():
        files[PurePosixPath(name)] = content
    contents = drive.DriveContents(files, data.payload)
    if fmt == "vfat":
        drive.build_vfat(contents, path, drive.volume_id(instance.uuid))
    else:
        drive.build_iso(contents, path, drive.volume_id(instance.uuid))
    return path


def boot_as_new_instance_with_foreign_drive(root: Path, new_uuid: str, drive_uuid: str
                                            ) -> None:
    """Make the tree a new instance made from this image (its SMBIOS uuid ``new_uuid``)
    whose /dev/vdb is a self-consistent drive of yet another instance (``drive_uuid``):
    a drive the agent must not trust."""
    (root / "sys/class/dmi/id/product_uuid").write_text(new_uuid + "\n")
    (root / "dev/vdb").unlink()
    make_drive(root / "dev/vdb", instance_doc(uuid=drive_uuid))


def make_guest(root: Path, doc: Any, drive_image: Path | None) -> Path:
    """A tree shaped like an ifupdown guest: /etc with a DHCP config, /sbin/ifup,
    /sys/class/{block,net}, /dev.

    The drive is /dev/vdb (the image file itself); /dev/vda is a blank root disk. NICs in
    /sys/class/net already carry the names the manifest pins (no renames needed).
    """
    return make_guest_for(root, parse_document(doc).instance, drive_image)


def make_guest_for(root: Path, instance: Instance, drive_image: Path | None) -> Path:
    """make_guest for a validated instance."""
    (root / "etc/network").mkdir(parents=True)
    (root / "etc/network/interfaces").write_bytes(ORIGINAL_ENI)
    (root / "sbin").mkdir()
    (root / "sbin/ifup").write_bytes(b"\x7fELF ifup")  # an ifupdown image
    (root / "etc/hostname").write_bytes(b"debian\n")
    (root / "run").mkdir()
    (root / "var/log").mkdir(parents=True)
    (root / "var/lib").mkdir(parents=True)
    (root / "run/resolv.conf").write_bytes(b"nameserver 127.0.0.53\n")
    os.symlink("../run/resolv.conf", root / "etc/resolv.conf")
    (root / "etc/udev/rules.d").mkdir(parents=True)
    (root / "dev").mkdir()
    for name, ro in (("vda", "0"), ("vdb", "1")):
        (root / "sys/class/block" / name).mkdir(parents=True)
        # The config drive is attached read-only, as nova attaches it.
        (root / "sys/class/block" / name / "ro").write_text(f"{ro}\n")
    (root / "sys/class/block/vda1").mkdir()
    (root / "sys/class/block/vda1/partition").write_text("1\n")
    with (root / "dev/vda").open("wb") as fh:
        fh.truncate(1024 * 1024)
    if drive_image is not None:
        copy_sparse(drive_image, root / "dev/vdb")
    # The SMBIOS system UUID nova/libvirt set to the instance uuid.
    (root / "sys/class/dmi/id").mkdir(parents=True)
    (root / "sys/class/dmi/id/product_uuid").write_text(f"{instance.uuid}\n")
    for nic in instance.nics:
        d = root / "sys/class/net" / nic.name
        d.mkdir(parents=True)
        (d / "address").write_text(f"{nic.mac}\n")
    lo = root / "sys/class/net/lo"
    lo.mkdir(parents=True)
    (lo / "address").write_text("00:00:00:00:00:00\n")
    return root


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of each data extent of an open file; the rest are holes (zeros)."""
    extents = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data past offset
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append((start, end))
        offset = end
    return extents


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy src's bytes to dst exactly, writing only its data extents (a drive image is
    64 MiB, nearly all hole: a plain copy would write every zero)."""
    with src.open("rb") as fin, dst.open("wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        for start, end in _data_extents(fin.fileno(), size):
            fin.seek(start)
            fout.seek(start)
            while start < end:
                chunk = fin.read(min(1 << 20, end - start))
                if not chunk:
                    break
                fout.write(chunk)
                start += len(chunk)
        fout.truncate(size)


_CHUNK = 64 * 1024


def _content(p: Path) -> bytes | tuple[str, int, tuple[tuple[int, bytes], ...]]:
    """A file's exact content: its bytes, or for a file of 1 MiB or more (the drive and
    root disk images) its size and every 64 KiB chunk that is not all zeros, read only
    where the file has data. Either form depends on the content alone."""
    with p.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 16 * _CHUNK:
            return fh.read()
        chunks: dict[int, bytes] = {}
        for start, end in _data_extents(fh.fileno(), size):
            at = start - start % _CHUNK
            while at < end:
                if at not in chunks:
                    fh.seek(at)
                    chunks[at] = fh.read(_CHUNK)
                at += _CHUNK
        return ("chunks", size, tuple((at, data) for at, data in sorted(chunks.items())
                                      if data.count(0) != len(data)))


def snapshot(root: Path, skip: tuple[str, ...] = ("var/log/netinject.log",)) -> dict[str, Any]:
    """Every file, symlink and directory under root, exactly (log file excepted)."""
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel in skip:
            continue
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", _content(p), p.stat().st_mode & 0o7777)
    return out


def run_agent(root: Path, *args: str, python: str = GUEST_PYTHON
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-I", "-S", str(AGENT), "run", "--root", str(root),
                           "--wait", "0", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def agent_log(root: Path) -> str:
    path = root / "var/log/netinject.log"
    return path.read_text() if path.exists() else ""


__all__ = ["sys"]


def assert_test_bed_network(res: Any, mtu: int | None = None,
                            host_route: bool = True) -> dict[str, Any]:
    """A booted test-bed guest (vm.testbed) holds exactly its injected config: eth0 with
    its MAC, MTU and one static IPv4 address, the default and host routes, DNS and the
    hostname, read from the guest's own report (``mtu``: another MTU to expect;
    ``host_route``: False to expect the host route missing). Returns eth0's
    ``ip -j addr`` entry."""
    from netinject.vm import testbed as vm

    assert res.time_to_network_s is not None, res.console[-3000:]
    links = res.json_section("ip-addr")
    assert links, res.console[-3000:]
    by_name = {link["ifname"]: link for link in links}
    assert "eth0" in by_name, by_name.keys()
    eth0: dict[str, Any] = by_name["eth0"]
    assert eth0["address"] == vm.GUEST_MAC  # the name the udev rule pins to this MAC
    assert eth0["mtu"] == (vm.MTU if mtu is None else mtu)
    v4 = [a for a in eth0["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"]) for a in v4] == [(vm.GUEST_IP, vm.PREFIX)]
    assert not v4[0].get("dynamic")  # static, not a DHCP lease
    routes = {(r["dst"], r.get("gateway"), r.get("dev")) for r in res.json_section("ip-route")}
    assert ("default", vm.HOST_IP, "eth0") in routes
    assert ((vm.HOST_ROUTE, vm.HOST_IP, "eth0") in routes) == host_route
    assert f"nameserver {vm.HOST_IP}" in res.report["resolv"].splitlines()
    assert res.report["hostname"] == "netinject-vm"
    return eth0


class RecordingAttacher:
    """Stands in for QEMU/libvirt only to record what got attached or detached, where no
    VM runs (the real QMP attach runs in the end-to-end hot-plug tests, the libvirt one
    in test_libvirt); the guest's side stays real (qemu-ga, the agent)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def attach(self, nic: Any, tap: str) -> None:
        self.calls.append(f"attach {nic.name}")

    def detach(self, nic: Any) -> None:
        self.calls.append(f"detach {nic.name}")
