"""Config drive: read back with independent tools and compared with `render`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from conftest import CASES, load_case, tree
from helpers.drive import blkid, iso_files, vfat_files
from netinject.cli import main
from netinject.guest.contract import parse_manifest
from netinject.sources.neutron import parse_document

CLOUD_INIT_PYTHON = "/usr/bin/python3"  # Debian's cloud-init lives in the system Python


def _drive(src: Path, out: Path, *extra: str) -> int:
    return main(["drive", str(src), "--out", str(out), *extra])


def _render_tree(src: Path, dest: Path) -> dict[str, bytes]:
    assert main(["render", str(src), "--out", str(dest)]) == 0
    return tree(dest)


@pytest.mark.parametrize("case", ["seed", "multi-nic-reordered", "dual-stack"])
def test_vfat_drive_matches_render(case: str, tmp_path: Path) -> None:
    src = CASES / case / "instance.json"
    img = tmp_path / "config.img"
    assert _drive(src, img) == 0
    ids = blkid(img)
    assert ids["TYPE"] == "vfat"
    assert ids["LABEL"].lower() == "config-2"
    assert img.stat().st_size == 64 * 1024 * 1024
    files = vfat_files(img, tmp_path / "x")
    rendered = _render_tree(src, tmp_path / "r")
    manifest = parse_manifest(files["netinject/manifest"])  # the agent's own parser
    payload = {e.path: files[f"netinject/{e.source}"] for e in manifest.files}
    assert payload == rendered
    doc = load_case(case)
    assert manifest.format == 3
    assert manifest.facts is not None  # each NIC's facts, for live changes
    assert [(f.name, f.mac) for f in manifest.facts.values()] == manifest.nics
    assert manifest.uuid == doc["instance"]["uuid"]
    assert {e.path: e.sha256 for e in manifest.files} == {
        k: hashlib.sha256(v).hexdigest() for k, v in rendered.items()}
    # Every stack's files ride along; netplan's and NetworkManager's are root-only.
    assert {e.path.split("/")[1] for e in manifest.files} >= {"network", "systemd",
                                                              "netplan", "NetworkManager"}
    for e in manifest.files:
        private = e.path.startswith(("etc/netplan/", "etc/NetworkManager/"))
        assert e.mode == (0o600 if private else 0o644), e.path
    meta = json.loads(files["openstack/latest/meta_data.json"])
    assert meta["uuid"] == doc["instance"]["uuid"]
    assert meta["hostname"] == doc["instance"]["hostname"]
    assert meta["launch_index"] == 0
    assert "availability_zone" in meta
    assert sorted(files) == sorted(
        ["netinject/manifest", "openstack/latest/meta_data.json",
         "openstack/latest/network_data.json", "openstack/latest/vendor_data.json",
         *(f"netinject/{e.source}" for e in manifest.files)])


def test_iso9660_drive_matches_vfat_drive(tmp_path: Path) -> None:
    src = CASES / "multi-nic-reordered" / "instance.json"
    assert _drive(src, tmp_path / "c.iso", "--format", "iso9660") == 0
    assert _drive(src, tmp_path / "c.img") == 0
    ids = blkid(tmp_path / "c.iso")
    assert ids["TYPE"] == "iso9660"
    assert ids["LABEL"] == "config-2"
    assert iso_files(tmp_path / "c.iso") == vfat_files(tmp_path / "c.img", tmp_path / "x")


@pytest.mark.parametrize("fmt", ["vfat", "iso9660"])
def test_builds_are_byte_identical(fmt: str, tmp_path: Path) -> None:
    src = CASES / "dual-stack" / "instance.json"
    assert _drive(src, tmp_path / "a", "--format", fmt) == 0
    os.environ["TZ"] = "Asia/Shanghai"  # the seed's cloud: timezone must not matter
    try:
        assert _drive(src, tmp_path / "b", "--format", fmt) == 0
    finally:
        del os.environ["TZ"]
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


@contextlib.contextmanager
def _timezone(name: str) -> Iterator[None]:
    """The process's local timezone set (tzset) for a block, then put back."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def _iso_dates(image: bytes) -> tuple[bytes, bytes]:
    """The primary volume descriptor's creation date (17 bytes, ECMA-119 8.4.26) and its
    root directory record's date (7 bytes: years since 1900, month, day, h, m, s, GMT
    offset)."""
    pvd = image[16 * 2048:17 * 2048]
    return pvd[813:830], pvd[156 + 18:156 + 25]


def test_an_iso_build_stops_only_pycdlibs_clock(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """While pycdlib builds (here: inside its add_fp), another thread, and the building
    thread outside pycdlib, read the real clock and the real local timezone; pycdlib
    alone sees 2010-01-01 UTC, which is what the image carries."""
    import pycdlib

    seen: dict[str, tuple[float, int]] = {}
    real_add_fp = pycdlib.PyCdlib.add_fp

    def add_fp(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not seen:
            def look() -> None:
                seen["other thread"] = (time.time(), time.localtime().tm_gmtoff)
            other = threading.Thread(target=look)
            other.start()
            other.join()
            seen["builder"] = (time.time(), time.localtime().tm_gmtoff)
            clock = sys.modules["pycdlib.pycdlib"].time
            seen["pycdlib"] = (clock.time(), clock.localtime(clock.time()).tm_gmtoff)
        return real_add_fp(self, *args, **kwargs)

    monkeypatch.setattr(pycdlib.PyCdlib, "add_fp", add_fp)
    with _timezone("Asia/Shanghai"):  # UTC+8, no daylight saving
        assert _drive(CASES / "dual-stack" / "instance.json", tmp_path / "c.iso",
                      "--format", "iso9660") == 0
    now = time.time()
    for who in ("other thread", "builder"):
        assert abs(seen[who][0] - now) < 300, who
        assert seen[who][1] == 8 * 3600, who
    assert seen["pycdlib"] == (1262304000.0, 0)
    assert _iso_dates((tmp_path / "c.iso").read_bytes()) == (
        b"2010010100000000\x00", bytes([110, 1, 1, 0, 0, 0, 0]))
    assert sys.modules["pycdlib.pycdlib"].time is time  # put back afterwards


def test_iso_builds_in_threads_are_byte_identical(tmp_path: Path) -> None:
    """Four ISO builds at once (as the vendordata service's threads could start them)
    give the bytes of one build alone, and leave pycdlib with the real clock."""
    from netinject import drive

    instance = parse_document(load_case("dual-stack")).instance
    drive.build(instance, tmp_path / "alone.iso", "iso9660")
    start = threading.Barrier(4)

    def build(n: int) -> None:
        start.wait()
        drive.build(instance, tmp_path / f"{n}.iso", "iso9660")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(build, range(4)))
    alone = (tmp_path / "alone.iso").read_bytes()
    assert all((tmp_path / f"{n}.iso").read_bytes() == alone for n in range(4))
    assert [name for name, m in sys.modules.items()
            if name.startswith("pycdlib") and getattr(m, "time", time) is not time] == []


def test_different_uuid_gives_different_volume_id(tmp_path: Path, write_json: Any) -> None:
    doc = load_case("seed")
    assert _drive(write_json(doc, "a.json"), tmp_path / "a.img") == 0
    doc["instance"]["uuid"] = "00000000-0000-4000-8000-000000000001"
    assert _drive(write_json(doc, "b.json"), tmp_path / "b.img") == 0
    assert blkid(tmp_path / "a.img")["UUID"] != blkid(tmp_path / "b.img")["UUID"]


def _cloud_init_convert(nd: dict[str, Any], macs: dict[str, str]) -> Any:
    code = ("import json,sys\n"
            "from cloudinit.sources.helpers.openstack import convert_net_json\n"
            "d=json.load(sys.stdin)\n"
            "print(json.dumps(convert_net_json(d['nd'], known_macs=d['macs'])))\n")
    done = subprocess.run([CLOUD_INIT_PYTHON, "-c", code], input=json.dumps(
        {"nd": nd, "macs": macs}), capture_output=True, text=True, check=True, timeout=60)
    return json.loads(done.stdout)


@pytest.mark.parametrize("case", ["seed", "multi-nic-reordered", "dual-stack"])
def test_cloud_init_parses_network_data(case: str, tmp_path: Path) -> None:
    """cloud-init's own parser (Debian package) reads our network_data.json and gets the
    same addresses, routes and DNS as our model."""
    from netinject.sources.documents import load_instance

    src = CASES / case / "instance.json"
    assert _drive(src, tmp_path / "c.img") == 0
    files = vfat_files(tmp_path / "c.img", tmp_path / "x")
    nd = json.loads(files["openstack/latest/network_data.json"])
    instance, _ = load_instance(src)
    macs = {str(n.mac): n.name for n in instance.nics}
    cfg = _cloud_init_convert(nd, macs)["config"]
    phys = {c["name"]: c for c in cfg if c["type"] == "physical"}
    assert set(phys) == {n.name for n in instance.nics}
    for nic in instance.nics:
        entry = phys[nic.name]
        assert entry["mac_address"] == str(nic.mac)
        assert entry.get("mtu") == nic.mtu
        statics = [(s["address"], s["netmask"]) for s in entry["subnets"]
                   if s["type"] in ("static", "static6")]
        assert statics == [(str(a.interface.ip), str(a.interface.network.netmask))
                           for a in nic.addresses if a.is_static and a.interface]
        routes = {(r["network"], r["netmask"], r["gateway"])
                  for s in entry["subnets"] for r in s.get("routes", [])}
        want = {(str(r.destination.network_address), str(r.destination.netmask),
                 str(r.gateway)) for a in nic.addresses if a.is_static for r in a.routes}
        assert want <= routes
        for version in (4, 6):
            gw = instance.gateway_nic(version)
            defaults = {r for r in routes if r[1] in ("0.0.0.0", "::")
                        and (":" in r[0]) == (version == 6)}
            if gw is nic:
                assert len(defaults) == 1
            else:
                assert not defaults
    dns = [c["address"] for c in cfg if c["type"] == "nameserver"]
    assert dns == [str(ip) for ip in instance.dns]


def test_policy_without_property_has_no_payload(tmp_path: Path, write_json: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    doc = load_case("seed")
    doc["image"]["properties"] = {"os_distro": "debian"}
    assert _drive(write_json(doc), tmp_path / "c.img") == 0
    assert "legacy DHCP path applies" in capsys.readouterr().err
    files = vfat_files(tmp_path / "c.img", tmp_path / "x")
    assert sorted(files) == ["openstack/latest/meta_data.json",
                             "openstack/latest/network_data.json",
                             "openstack/latest/vendor_data.json"]


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes", "Yes"])
def test_policy_accepts_system_metadata_form(value: str, tmp_path: Path,
                                             write_json: Any) -> None:
    doc = load_case("seed")
    doc["image"] = {}
    doc["system_metadata"]["image_support_inject_ip"] = value
    assert _drive(write_json(doc), tmp_path / "c.img") == 0
    assert "netinject/manifest" in vfat_files(tmp_path / "c.img", tmp_path / "x")


@pytest.mark.parametrize("value", ["false", "0", "no", "", "truthy"])
def test_policy_false_values(value: str, tmp_path: Path, write_json: Any) -> None:
    doc = load_case("seed")
    doc["image"]["properties"]["support_inject_ip"] = value
    assert _drive(write_json(doc), tmp_path / "c.img") == 0
    assert "netinject/manifest" not in vfat_files(tmp_path / "c.img", tmp_path / "x")


def test_bad_input_leaves_no_image(tmp_path: Path, write_json: Any,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    doc = load_case("seed")
    doc["ports"][0]["fixed_ips"][0]["ip_address"] = "10.0.0.300"
    out = tmp_path / "out"
    out.mkdir()
    assert _drive(write_json(doc), out / "c.img") == 2
    assert "ports[0].fixed_ips[0].ip_address: '10.0.0.300' is not an IP address" in \
        capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_failed_write_leaves_no_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The image is written in-process (netinject.vfat): a disk that fills up half-way is a
    message and exit 1, and neither the image nor its staging file is left behind."""
    import errno

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)  # netinject.vfat's only way to write
    out = tmp_path / "out"
    out.mkdir()
    assert _drive(CASES / "seed" / "instance.json", out / "c.img") == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_drive_starts_no_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nova's 64 MiB vfat drive is written without mkfs.fat or mtools (each of the old
    process starts cost more than the whole in-process build)."""
    from netinject import drive

    def started(args: list[str], env: object) -> None:
        pytest.fail(f"started {args[0]}")

    monkeypatch.setattr(drive, "_run", started)
    assert _drive(CASES / "multi-nic-reordered" / "instance.json", tmp_path / "c.img") == 0
    assert blkid(tmp_path / "c.img")["LABEL"] == "config-2"


def test_libvirt_xml_attaches_read_only_virtio_disk(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "c.img"
    assert _drive(CASES / "seed" / "instance.json", img, "--libvirt-xml") == 0
    disk = ET.fromstring(capsys.readouterr().out)
    assert disk.tag == "disk"
    assert disk.get("device") == "disk"
    assert disk.find("readonly") is not None
    target = disk.find("target")
    assert target is not None
    assert target.get("bus") == "virtio"
    source = disk.find("source")
    assert source is not None
    assert source.get("file") == str(img)


@pytest.mark.parametrize("case", sorted(p.parent.name for p in CASES.glob("*/instance.json")))
def test_network_data_round_trip(case: str) -> None:
    """network_data.json written by dump() parses back (same module) to the same NICs,
    addresses, routes, DNS and default route as the model it came from."""
    from netinject.sources import network_data

    instance = parse_document(load_case(case)).instance
    back = network_data.parse(json.loads(json.dumps(network_data.dump(instance))))
    assert back.dns == instance.dns
    assert [(n.index, n.mac, n.port_id, n.mtu) for n in back.nics] == \
        [(n.index, n.mac, n.port_id, n.mtu) for n in instance.nics]
    for mine, theirs in zip(instance.nics, back.nics, strict=True):
        assert len(mine.addresses) == len(theirs.addresses)
        for a, b in zip(mine.addresses, theirs.addresses, strict=True):
            # SLAAC and stateless DHCPv6 addresses are the guest's to derive: written
            # without the address the model knows.
            assert (b.version, b.mode, b.interface, b.routes, b.dns) == \
                (a.version, a.mode, a.interface if a.is_static else None, a.routes, a.dns)
            # Only the stanza carrying its family's default route has the gateway.
            assert b.gateway == (a.gateway if instance.carries_default_route(a) else None)
    for version in (4, 6):
        mine_gw, theirs_gw = instance.gateway_nic(version), back.gateway_nic(version)
        assert (mine_gw.index if mine_gw else None) == (theirs_gw.index if theirs_gw else None)


def test_network_data_case_round_trips_to_itself() -> None:
    from netinject.sources import network_data

    nd = json.loads((CASES / "network-data/network_data.json").read_text())
    once = network_data.parse(nd)
    twice = network_data.parse(network_data.dump(once))
    assert network_data.dump(twice) == network_data.dump(once)


@pytest.mark.parametrize("fmt", ["vfat", "iso9660"])
def test_user_data_goes_where_nova_puts_it(fmt: str, tmp_path: Path, write_json: Any) -> None:
    """--user-data FILE: the bytes as they are, in openstack/latest/user_data (cloud-init's
    ConfigDrive datasource reads it there), beside the payload."""
    data = b"#cloud-config\nruncmd: [[touch, /tmp/x]]\n\xff binary is fine\n"
    (tmp_path / "ud").write_bytes(data)
    out = tmp_path / "d.img"
    assert _drive(write_json(load_case("seed")), out, "--user-data", str(tmp_path / "ud"),
                  "--format", fmt) == 0
    files = vfat_files(out, tmp_path / "x") if fmt == "vfat" else iso_files(out)
    assert files["openstack/latest/user_data"] == data
    assert "netinject/manifest" in files


@pytest.mark.parametrize(("size", "says"), [
    (65536, "--user-data: '65536 bytes' is over nova's limit of 65535 bytes"),
    (None, "--user-data: "),
])
def test_bad_user_data_is_refused_before_anything(size: int | None, says: str,
                                                 tmp_path: Path, write_json: Any,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ud = tmp_path / "ud"
    if size is not None:
        ud.write_bytes(b"x" * size)
    out = tmp_path / "d.img"
    assert _drive(write_json(load_case("seed")), out, "--user-data", str(ud)) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()
