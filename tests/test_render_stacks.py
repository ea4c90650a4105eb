"""The networkd, netplan and NetworkManager renderers, checked by each stack's own code:
netplan's generator, libnm's keyfile reader + verify, systemd-networkd configuring veth
links in a namespace this test makes, and udev's net_setup_link builtin. Every golden
case is rendered in every format (the exact bytes are in test_render_golden.py)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from conftest import CASES, tree
from helpers import peers
from netinject.cli import main
from netinject.model import AddrMode, Instance
from netinject.render import REGISTRY, Options, render_all
from netinject.sources.documents import load_instance

CASE_NAMES = ["seed", "multi-nic-reordered", "dual-stack", "no-gateway", "network-data"]
STACK_FORMATS = ("eni", "networkd", "netplan", "nm")


def instance_of(case: str) -> Instance:
    d = CASES / case
    if case == "network-data":
        return load_instance(None, d / "network_data.json", d / "meta_data.json")[0]
    return load_instance(d / "instance.json")[0]


def rendered(case: str, fmt: str, root: Path) -> dict[PurePosixPath, str]:
    files = render_all(instance_of(case), (fmt,), Options())
    for rel, text in files.items():
        target = root.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o600 if fmt in ("netplan", "nm") else 0o644)
    return files


def static(instance: Instance, nic_index: int) -> list[str]:
    nic = instance.nics[nic_index]
    return sorted(str(a.interface) for a in nic.addresses if a.is_static)


def test_every_stack_is_a_registered_format() -> None:
    assert set(STACK_FORMATS) <= set(REGISTRY)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_golden_trees_hold_every_format(case: str) -> None:
    """A new format means its expected files in every case (checked byte for byte by
    test_render_golden)."""
    expected = tree(CASES / case / "expected")
    for fmt in STACK_FORMATS:
        files = render_all(instance_of(case), (fmt,), Options())
        assert files, fmt
        for rel in files:
            assert str(rel) in expected, f"{case}: no expected file for {rel}"


# -- netplan -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASE_NAMES)
def test_netplan_generate_accepts_and_generates_what_we_rendered(case: str,
                                                                 tmp_path: Path) -> None:
    rendered(case, "netplan", tmp_path)
    done = peers.netplan_generate(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr.lower(), done.stderr
    instance = instance_of(case)
    generated = tmp_path / "run/systemd/network"
    for nic in instance.nics:
        network = (generated / f"10-netplan-{nic.name}.network").read_text()
        assert f"MACAddress={nic.mac}" in network
        for addr in static(instance, nic.index):
            assert f"Address={addr}" in network
        link = (generated / f"10-netplan-{nic.name}.link").read_text()
        assert f"Name={nic.name}" in link
        if nic.mtu is not None:
            assert f"MTUBytes={nic.mtu}" in link or f"MTUBytes={nic.mtu}" in network
        for version in (4, 6):
            found = instance.default_route(version)
            if found is None:
                continue
            gw_line = f"Gateway={found[1].gateway}"
            assert (gw_line in network) == (found[0] is nic)


def test_networkd_reads_our_dropin_for_netplans_network_without_carrier(
        tmp_path: Path) -> None:
    """The drop-in netplan's NICs get (ConfigureWithoutCarrier=yes: netplan 0.101
    refuses its own ignore-carrier) is read by the real networkd with the .network the
    real netplan generated: a NIC whose link never has carrier (its veth peer down)
    gets its static addresses, and without the drop-in it gets none."""
    import shutil

    tree_root = tmp_path / "tree"
    files = rendered("seed", "netplan", tree_root)
    dropins = [p for p in files if p.name == "90-netinject.conf"]
    assert dropins
    done = peers.netplan_generate(tree_root)
    assert done.returncode == 0, done.stderr
    config = tmp_path / "network"
    shutil.copytree(tree_root / "run/systemd/network", config)
    for rel in dropins:
        (config / rel.parent.name).mkdir()
        shutil.copy(tree_root / str(rel), config / rel.parent.name / rel.name)
    for f in config.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)  # (networkd reads as its own user)
    for f in config.glob("*.network"):
        # netplan >= 0.107 matches the permanent MAC, which a virtio NIC has and a veth
        # has not (ethtool -P: all zeroes): here the current one, the same address.
        f.write_text(f.read_text().replace("PermanentMACAddress=", "MACAddress="))
    instance = instance_of("seed")
    nics = {nic.name: str(nic.mac) for nic in instance.nics}
    want = {nic.name: static(instance, nic.index) for nic in instance.nics}
    n_static = sum(len(v) for v in want.values())
    got = peers.networkd_apply(config, nics, n_static, carrier=False)
    assert {n: got["addresses"].get(n, []) for n in nics} == want, got["log"]
    for rel in dropins:
        shutil.rmtree(config / rel.parent.name)
    got = peers.networkd_apply(config, nics, n_static, timeout=3, carrier=False)
    assert all(got["addresses"].get(n, []) == [] for n in nics), got


def test_netplan_file_is_private_when_written(tmp_path: Path) -> None:
    assert main(["render", str(CASES / "seed/instance.json"), "--format", "netplan,nm",
                 "--out", str(tmp_path)]) == 0
    for f in [*tmp_path.rglob("*.yaml"), *tmp_path.rglob("*.nmconnection")]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_netplan_generate_refuses_a_broken_file(tmp_path: Path) -> None:
    """The peer can fail: a value of the wrong type is an error with file:line."""
    files = rendered("seed", "netplan", tmp_path)
    path = tmp_path / str(next(iter(files)))
    text = path.read_text()
    assert "dhcp4: false" in text
    path.write_text(text.replace("dhcp4: false", "dhcp4: sometimes", 1))
    done = peers.netplan_generate(tmp_path)
    assert done.returncode != 0
    assert "90-netinject.yaml" in done.stderr


# -- NetworkManager ------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASE_NAMES)
def test_libnm_reads_and_verifies_every_keyfile_without_a_warning(case: str,
                                                                  tmp_path: Path) -> None:
    files = rendered(case, "nm", tmp_path)
    instance = instance_of(case)
    paths = [tmp_path / str(rel) for rel in sorted(files)]
    read = peers.nm_read(paths)
    assert len(read) == len(instance.nics)
    for nic in instance.nics:
        got = read[str(tmp_path / f"etc/NetworkManager/system-connections/"
                                  f"netinject-{nic.name}.nmconnection")]
        assert got["warnings"] == []
        assert got["type"] == "802-3-ethernet"
        assert got["mac"].lower() == str(nic.mac)
        assert got["mtu"] == (nic.mtu or 0)
        for version in (4, 6):
            want = sorted(str(a.interface) for a in nic.addresses
                          if a.version == version and a.is_static)
            sect = got[f"ipv{version}"]
            assert sorted(sect["addresses"]) == want
            found = instance.default_route(version)
            assert sect["gateway"] == (str(found[1].gateway) if found and found[0] is nic
                                       else None)
            routes = sorted(f"{r.destination},{r.gateway}" for a in nic.addresses
                            if a.version == version and a.mode is not AddrMode.DHCP
                            for r in a.routes)
            assert sorted(sect["routes"]) == routes
            modes = {a.mode for a in nic.addresses if a.version == version}
            if AddrMode.SLAAC in modes and AddrMode.STATIC not in modes:
                assert sect["method"] == "auto"
                assert got["addr_gen_mode"] == 0  # NM_SETTING_IP6_CONFIG_ADDR_GEN_MODE_EUI64
    servers = [s for nic_read in read.values() for v in ("ipv4", "ipv6")
               for s in nic_read[v]["dns"]]
    assert sorted(servers) == sorted(str(s) for s in instance.dns)


def test_libnm_refuses_a_bad_value(tmp_path: Path) -> None:
    """The strict check can fail where nmcli --offline would repair silently."""
    files = rendered("seed", "nm", tmp_path)
    path = tmp_path / str(next(iter(files)))
    path.write_text(path.read_text().replace("method=manual", "method=sideways", 1))
    with pytest.raises(subprocess.CalledProcessError):
        peers.nm_read([path])


# -- systemd-networkd and udev -------------------------------------------------------------

@pytest.mark.parametrize("case", CASE_NAMES)
def test_networkd_configures_exactly_the_rendered_addresses_and_routes(
        case: str, tmp_path: Path) -> None:
    config = tmp_path / "network"
    config.mkdir()
    files = render_all(instance_of(case), ("networkd",), Options())
    for rel, text in files.items():
        (config / rel.name).write_text(text)
    instance = instance_of(case)
    nics = {nic.name: str(nic.mac) for nic in instance.nics}
    n_static = sum(len(static(instance, n.index)) for n in instance.nics)
    got = peers.networkd_apply(config, nics, n_static)
    for nic in instance.nics:
        assert got["addresses"].get(nic.name, []) == static(instance, nic.index), got["log"]
        if nic.mtu is not None:
            assert got["links"][nic.name]["mtu"] == nic.mtu
    routes = {(r["dst"], r.get("gateway"), r.get("dev")) for r in got["routes"]
              if r.get("gateway")}
    want = set()
    for nic in instance.nics:
        for addr in nic.addresses:
            if addr.is_static and addr.gateway is not None \
                    and instance.carries_default_route(addr):
                want.add(("default", str(addr.gateway), nic.name))
            if addr.mode is not AddrMode.DHCP and addr.is_static:
                for r in addr.routes:
                    dst = str(r.destination)
                    if r.destination.prefixlen == r.destination.max_prefixlen:
                        dst = str(r.destination.network_address)
                    want.add((dst, str(r.gateway), nic.name))
    assert routes == want, got["log"]


def test_networkd_announces_nothing_itself(tmp_path: Path) -> None:
    """Why the agent announces on networkd images: the rendered .network leaves
    DuplicateAddressDetection alone (its ipv4 announce holds the address ~6 s)."""
    files = render_all(instance_of("seed"), ("networkd",), Options())
    assert not any("DuplicateAddressDetection" in t for t in files.values())


@pytest.mark.parametrize("case", ["multi-nic-reordered", "dual-stack"])
def test_udev_net_setup_link_names_each_nic_by_our_link_file(case: str,
                                                             tmp_path: Path) -> None:
    config = tmp_path / "network"
    config.mkdir()
    files = render_all(instance_of(case), ("networkd",), Options())
    for rel, text in files.items():
        if rel.suffix == ".link":
            (config / rel.name).write_text(text)
    for nic in instance_of(case).nics:
        props = peers.link_name(config, str(nic.mac))
        assert props.get("ID_NET_LINK_FILE") == \
            f"/etc/systemd/network/10-netinject-{nic.name}.link", props
        assert props.get("ID_NET_NAME") == nic.name, props
