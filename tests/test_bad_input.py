"""Bad input: every problem reported with its field path and value; nothing written."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import CASES, load_case, tree
from netinject.cli import main

Doc = dict[str, Any]


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    """A mutation that sets doc[a][b]... (dotted path, integers index lists)."""
    def apply(doc: Doc) -> None:
        parts = path.split(".")
        node: Any = doc
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node[p]
        last = parts[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return apply


def _del(path: str) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        parts = path.split(".")
        node: Any = doc
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node[p]
        del node[parts[-1]]
    return apply


BAD: list[tuple[str, Callable[[Doc], None], str]] = [
    ("ip-octet", _set("ports.0.fixed_ips.0.ip_address", "10.180.81.300"),
     "ports[0].fixed_ips[0].ip_address: '10.180.81.300' is not an IP address"),
    ("ip-outside", _set("ports.0.fixed_ips.0.ip_address", "10.180.90.5"),
     "ports[0].fixed_ips[0].ip_address: '10.180.90.5' is not inside subnet 10.180.80.0/23"),
    ("mac-short", _set("ports.0.mac_address", "fa:16:3e:5d:8a"),
     "ports[0].mac_address: 'fa:16:3e:5d:8a' is not a MAC address"),
    ("mac-newline", _set("ports.0.mac_address", "fa:16:3e:5d:8a:01\"\nRUN+=\"/bin/sh"),
     "ports[0].mac_address: "),
    ("cidr-bad", _set("subnets.0.cidr", "10.180.80.0/33"),
     "subnets[0].cidr: '10.180.80.0/33' is not a CIDR"),
    ("cidr-hostbits", _set("subnets.0.cidr", "10.180.81.0/23"),
     "subnets[0].cidr: '10.180.81.0/23' has host bits set"),
    ("gateway-off-subnet", _set("subnets.0.gateway_ip", "10.9.9.1"),
     "subnets[0].gateway_ip: '10.9.9.1' is not reachable on subnet 10.180.80.0/23"),
    ("nexthop-off-subnet", _set("subnets.0.host_routes.0.nexthop", "192.0.2.1"),
     "subnets[0].host_routes[0].nexthop: '192.0.2.1' is not reachable"),
    ("route-injection", _set("subnets.0.host_routes.0.destination", "10.0.0.0/8; reboot"),
     "subnets[0].host_routes[0].destination: '10.0.0.0/8; reboot' is not a CIDR"),
    ("route-default", _set("subnets.0.host_routes.0.destination", "0.0.0.0/0"),
     "subnets[0].host_routes[0].destination: '0.0.0.0/0' is a default route"),
    ("dns-injection", _set("subnets.0.dns_nameservers", ["8.8.8.8 && rm -rf /"]),
     "subnets[0].dns_nameservers[0]: '8.8.8.8 && rm -rf /' is not an IP address"),
    ("dns-newline", _set("subnets.0.dns_nameservers", ["192.0.2.1\nnameserver 6.6.6.6"]),
     "subnets[0].dns_nameservers[0]: "),
    ("hostname-newline", _set("instance.hostname", "web-1\n10.0.0.1 evil"),
     "instance.hostname: 'web-1\\n10.0.0.1 evil' is not an RFC 1123 host name"),
    ("hostname-semicolon", _set("instance.hostname", "web;reboot"),
     "instance.hostname: 'web;reboot' is not an RFC 1123 host name"),
    ("hostname-hyphen", _set("instance.hostname", "-web"),
     "instance.hostname: '-web' is not an RFC 1123 host name"),
    ("dangling-subnet", _set("ports.0.fixed_ips.0.subnet_id", "nope"),
     "ports[0].fixed_ips[0].subnet_id: 'nope' refers to no subnet in subnets[]"),
    ("dangling-network", _set("ports.0.network_id", "nope"),
     "ports[0].network_id: 'nope' refers to no network in networks[]"),
    ("subnet-dangling-network", _set("subnets.0.network_id", "nope"),
     "subnets[0].network_id: 'nope' refers to no network in networks[]"),
    ("mtu-low", _set("networks.0.mtu", 67), "networks[0].mtu: 67 is out of range 68..65535"),
    ("mtu-string", _set("networks.0.mtu", "1400; reboot"), "networks[0].mtu: '1400; reboot' is"),
    ("uuid-bad", _set("instance.uuid", "not-a-uuid"), "instance.uuid: 'not-a-uuid' is not a UUID"),
    ("port-id-bad", _set("ports.0.id", "eth0\nevil"), "ports[0].id: 'eth0\\nevil' is not a UUID"),
    ("missing-mac", _del("ports.0.mac_address"), "ports[0].mac_address: is required but missing"),
    ("missing-cidr", _del("subnets.0.cidr"), "subnets[0].cidr: is required but missing"),
    ("version-mismatch", _set("subnets.0.ip_version", 6),
     "subnets[0].cidr: '10.180.80.0/23' is not an IPv6 network"),
    ("cidr-zero-prefix", _set("subnets.0.cidr", "0.0.0.0/0"),
     "subnets[0].cidr: '0.0.0.0/0' has prefix length 0: an IPv4 subnet's prefix length "
     "must be 1..32\n"),
    ("pattern-garbage", _set("system_metadata.ports_pattern", "__import__('os')"),
     "system_metadata.ports_pattern: "),
    ("pattern-index", _set("system_metadata.ports_pattern",
                           '{"fdcf8a8b-3b23-436c-8e24-edacb61bebaa": "0; reboot"}'),
     "is not a NIC index"),
]


@pytest.mark.parametrize(("name", "mutate", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_rejected_with_path_and_nothing_written(
        name: str, mutate: Callable[[Doc], None], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    doc = load_case("seed")
    mutate(doc)
    src = tmp_path / "in.json"
    src.write_text(json.dumps(doc))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("existing")
    sysmeta = tmp_path / "sysmeta.json"
    before = tree(out)
    rc = main(["render", str(src), "--out", str(out), "--system-metadata-out", str(sysmeta)])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert tree(out) == before
    assert not sysmeta.exists()


def test_every_error_is_reported_in_one_run(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    doc = load_case("multi-nic-reordered")
    doc["ports"][0]["mac_address"] = "zz:16:3e:00:00:01"
    doc["ports"][1]["fixed_ips"][0]["ip_address"] = "10.0.0.1"
    doc["subnets"][2]["gateway_ip"] = "1.2.3.4"
    doc["instance"]["hostname"] = "bad_name"
    src = tmp_path / "in.json"
    src.write_text(json.dumps(doc))
    assert main(["render", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "4 error(s)" in err
    for path in ("ports[0].mac_address", "ports[1].fixed_ips[0].ip_address",
                 "subnets[2].gateway_ip", "instance.hostname"):
        assert path in err
    assert not (tmp_path / "o").exists()


def test_duplicate_mac_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = load_case("multi-nic-reordered")
    doc["ports"][2]["mac_address"] = "fa:16:3e:00:00:01"
    src = tmp_path / "in.json"
    src.write_text(json.dumps(doc))
    assert main(["render", str(src), "--print"]) == 2
    assert "ports[2].mac_address: 'fa:16:3e:00:00:01' is also the MAC of ports[0]" in \
        capsys.readouterr().err


def test_invalid_json_names_the_position(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.json"
    src.write_text('{"instance": ')
    assert main(["render", str(src), "--print"]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_unknown_fields_are_ignored(tmp_path: Path) -> None:
    doc = copy.deepcopy(load_case("seed"))
    doc["ports"][0]["binding:host_id"] = "compute-1"
    doc["extra"] = {"anything": [1, 2]}
    src = tmp_path / "in.json"
    src.write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(["render", str(src), "--out", str(out)]) == 0
    assert tree(out) == tree(CASES / "seed" / "expected")


def test_network_data_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nd = json.loads((CASES / "network-data" / "network_data.json").read_text())
    nd["networks"][0]["ip_address"] = "192.0.2.400"
    nd["networks"][0]["routes"][1]["gateway"] = "10.0.0.1"
    nd["links"][1]["ethernet_mac_address"] = "fa:16:3e:20:00:01"
    nd["networks"][2]["type"] = "ipv4_magic"
    src = tmp_path / "nd.json"
    src.write_text(json.dumps(nd))
    assert main(["render", "--network-data", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "networks[0].ip_address: '192.0.2.400' is not an IP address" in err
    assert "links[1].ethernet_mac_address: 'fa:16:3e:20:00:01' is also the MAC of links[0]" in err
    assert "networks[2].type: 'ipv4_magic' is not one of" in err
    assert not (tmp_path / "o").exists()


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(CASES / "seed" / "instance.json")]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    assert main(["render", "--print"]) == 2
    assert main(["render", str(tmp_path / "missing.json"), "--print"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_ipv6_subnet_with_a_zero_prefix_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20 F2: a /0 subnet rendered address/0 in every stack; netplan's generator
    refuses that (prefix 1..32, 1..128), so netplan images fell back to DHCP."""
    doc = load_case("dual-stack")
    doc["subnets"][1]["cidr"] = "::/0"
    src = tmp_path / "in.json"
    src.write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(["render", str(src), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"netinject: {src}: invalid input (1 error(s)):\n"
        "  subnets[1].cidr: '::/0' has prefix length 0: an IPv6 subnet's prefix length must "
        "be 1..128\n")
    assert not out.exists()


def _cidr_address(net: Doc, cidr: str) -> None:
    """The address with its prefix (address/prefix) and no netmask field."""
    net["ip_address"] = cidr
    del net["netmask"]


ND_ZERO_PREFIX: list[tuple[str, Callable[[Doc], None], str]] = [
    ("netmask", lambda nd: nd["networks"][0].__setitem__("netmask", "0.0.0.0"),
     "networks[0].netmask: '0.0.0.0' gives prefix length 0: an IPv4 address's prefix "
     "length must be 1..32"),
    ("prefix-number", lambda nd: nd["networks"][0].__setitem__("netmask", 0),
     "networks[0].netmask: 0 gives prefix length 0: an IPv4 address's prefix length must "
     "be 1..32"),
    ("ipv6-netmask", lambda nd: nd["networks"][1].__setitem__("netmask", "::"),
     "networks[1].netmask: '::' gives prefix length 0: an IPv6 address's prefix length "
     "must be 1..128"),
    ("cidr-in-ip-address", lambda nd: _cidr_address(nd["networks"][0], "192.0.2.44/0"),
     "networks[0].ip_address: '192.0.2.44/0' gives prefix length 0: an IPv4 address's "
     "prefix length must be 1..32"),
]


@pytest.mark.parametrize(("name", "mutate", "message"), ND_ZERO_PREFIX,
                         ids=[c[0] for c in ND_ZERO_PREFIX])
def test_network_data_zero_prefix_is_refused(name: str, mutate: Callable[[Doc], None],
                                             message: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    nd = json.loads((CASES / "network-data" / "network_data.json").read_text())
    mutate(nd)
    src = tmp_path / "nd.json"
    src.write_text(json.dumps(nd))
    img = tmp_path / "d.img"
    assert main(["drive", "--network-data", str(src), "--out", str(img)]) == 2
    assert capsys.readouterr().err == (
        f"netinject: {src}: invalid input (1 error(s)):\n  {message}\n")
    assert not img.exists()


@pytest.mark.parametrize(("form", "prefix"), [("v4", 1), ("v4", 32), ("v6", 1), ("v6", 128)])
def test_prefix_bounds_themselves_are_accepted(form: str, prefix: int, tmp_path: Path) -> None:
    """The bounds are netplan's (and Neutron's, which refuses only /0): /1 and the host
    prefixes /32 and /128 render (from network_data.json, where an address may carry
    its own host prefix)."""
    nd = json.loads((CASES / "network-data" / "network_data.json").read_text())
    net = nd["networks"][0 if form == "v4" else 1]
    net["netmask"] = str(prefix)
    net["routes"] = [r for r in net["routes"] if r["netmask"] in ("0.0.0.0", "::")]
    if prefix in (32, 128):
        net["routes"] = []  # nothing is reachable on a host prefix
    src = tmp_path / "nd.json"
    src.write_text(json.dumps(nd))
    out = tmp_path / "out"
    assert main(["render", "--network-data", str(src), "--out", str(out),
                 "--format", "netplan"]) == 0
    ip = net["ip_address"]
    assert f'        - "{ip}/{prefix}"\n' in (out / "etc/netplan/90-netinject.yaml").read_text()


def test_model_refuses_a_zero_prefix_address() -> None:
    import ipaddress

    from netinject.model import AddrMode, IfAddress

    with pytest.raises(ValueError, match=r"^10.0.0.5/0 has prefix length 0: an IPv4 "
                                         r"address's prefix length must be 1\.\.32$"):
        IfAddress(4, AddrMode.STATIC, ipaddress.ip_interface("10.0.0.5/0"))
    with pytest.raises(ValueError, match=r"must be 1\.\.128$"):
        IfAddress(6, AddrMode.DHCP, ipaddress.ip_interface("2001:db8::5/0"))
