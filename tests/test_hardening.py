"""Host-side hardening: each test here failed on main before the fix it names.

Zone ids, strict validators, no tracebacks on hostile documents, every output path
checked before the first write, the agent's size limit enforced when the drive is built,
and ``--style seed`` exactly the seed's lines. Every command runs through the real CLI.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import CASES, ifup_no_act, load_case, tree
from netinject.cli import main
from netinject.guest import contract as guest

Doc = dict[str, Any]
ZONE = "fe80::1%$(touch /tmp/netinject-pwned)"


def _dual() -> Doc:
    return copy.deepcopy(load_case("dual-stack"))


def _v6_subnet(doc: Doc) -> Doc:
    return next(s for s in doc["subnets"] if s["ip_version"] == 6)


NEUTRON_ZONE_CASES: list[tuple[str, Callable[[Doc], None], str]] = [
    ("gateway_ip", lambda d: _v6_subnet(d).__setitem__("gateway_ip", ZONE), "gateway_ip"),
    ("nexthop", lambda d: _v6_subnet(d).__setitem__(
        "host_routes", [{"destination": "2001:db8:99::/48", "nexthop": ZONE}]), "nexthop"),
    ("destination", lambda d: _v6_subnet(d).__setitem__(
        "host_routes", [{"destination": "2001:db8:99::%x/48", "nexthop": "fe80::1"}]),
     "destination"),
    ("dns", lambda d: _v6_subnet(d).__setitem__("dns_nameservers", [ZONE]),
     "dns_nameservers[0]"),
    ("fixed-ip", lambda d: next(
        ip for p in d["ports"] for ip in p["fixed_ips"] if ":" in ip["ip_address"]
    ).__setitem__("ip_address", "2001:db8:1::10%eth0"), "ip_address"),
]


@pytest.mark.parametrize(("name", "mutate", "field"), NEUTRON_ZONE_CASES,
                         ids=[c[0] for c in NEUTRON_ZONE_CASES])
def test_zone_ids_are_refused_in_neutron_input(name: str, mutate: Callable[[Doc], None],
                                               field: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    doc = _dual()
    mutate(doc)
    src = tmp_path / "doc.json"
    src.write_text(json.dumps(doc))
    out = tmp_path / "out"
    for cmd in (["render", str(src), "--out", str(out)],
                ["drive", str(src), "--out", str(tmp_path / "d.img")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert field in err, err
        assert "zone id" in err, err
    assert not out.exists()
    assert not (tmp_path / "d.img").exists()


def _nd() -> Doc:
    nd: Doc = json.loads((CASES / "network-data/network_data.json").read_text())
    return nd


def _v6_net(nd: Doc) -> Doc:
    return next(n for n in nd["networks"] if n["type"] == "ipv6")


ND_ZONE_CASES: list[tuple[str, Callable[[Doc], None], str]] = [
    ("route-gateway", lambda nd: _v6_net(nd)["routes"].append(
        {"network": "2001:db8:99::", "netmask": "ffff:ffff:ffff::", "gateway": ZONE}),
     ".gateway"),
    ("route-network", lambda nd: _v6_net(nd)["routes"].append(
        {"network": "2001:db8:99::%x", "netmask": "ffff:ffff:ffff::",
         "gateway": "fe80::1"}), ".network"),
    ("route-netmask", lambda nd: _v6_net(nd)["routes"].append(
        {"network": "2001:db8:99::", "netmask": "ffff:ffff:ffff::%x",
         "gateway": "fe80::1"}), ".netmask"),
    ("services", lambda nd: nd["services"].append({"type": "dns", "address": ZONE}),
     "services["),
    ("network-services", lambda nd: _v6_net(nd).setdefault("services", []).append(
        {"type": "dns", "address": ZONE}), ".services["),
]


@pytest.mark.parametrize(("name", "mutate", "field"), ND_ZONE_CASES,
                         ids=[c[0] for c in ND_ZONE_CASES])
def test_zone_ids_are_refused_in_network_data(name: str, mutate: Callable[[Doc], None],
                                              field: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    nd = _nd()
    mutate(nd)
    src = tmp_path / "nd.json"
    src.write_text(json.dumps(nd))
    out = tmp_path / "out"
    assert main(["render", "--network-data", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert field in err, err
    assert "zone id" in err or "netmask" in err, err
    assert not out.exists()


def test_model_itself_refuses_zone_ids() -> None:
    import ipaddress

    from netinject.model import AddrMode, IfAddress, Route, ZoneIdError, parse_ip, parse_network

    zoned = ipaddress.ip_address("fe80::1%x")
    with pytest.raises(ZoneIdError):
        Route(ipaddress.ip_network("2001:db8::/32"), zoned)
    with pytest.raises(ZoneIdError):
        IfAddress(6, AddrMode.STATIC,
                  ipaddress.ip_interface("fe80::5%x/64"))
    with pytest.raises(ValueError, match="zone id"):
        parse_ip("fe80::1%1")
    with pytest.raises(ValueError, match="zone id"):
        parse_network("fe80::%1/64")


def test_what_a_zone_id_would_do_to_real_ifup(tmp_path: Path) -> None:
    """Why it matters: real ifupdown hands a zoned gateway to /bin/sh as root. This runs
    ifup on a hand-written ENI (not one of ours) in --no-act mode only, to show that the
    command it would execute carries the shell text as it is."""
    eni = tmp_path / "interfaces"
    eni.write_text("auto eth9\niface eth9 inet6 static\n    address 2001:db8::5/64\n"
                   f"    gateway {ZONE}\n")
    done = ifup_no_act(eni, tmp_path / "state")
    assert "$(touch /tmp/netinject-pwned)" in done.stdout, done.stdout


STRICT_CASES: list[tuple[str, str, Any, str]] = [
    ("mac-trailing-newline", "ports.0.mac_address", "fa:16:3e:5d:8a:01\n", "mac_address"),
    ("hostname-newline", "instance.hostname", "web-1\n", "instance.hostname"),
    ("hostname-kelvin", "instance.hostname", "web-\u212a", "instance.hostname"),
    ("ip-trailing-newline", "ports.0.fixed_ips.0.ip_address", "10.180.81.249\n",
     "ip_address"),
    ("cidr-unicode-digit", "subnets.0.cidr", "10.180.80.0/2\u0663", "cidr"),
]


def _set(doc: Doc, dotted: str, value: Any) -> None:
    node: Any = doc
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node[p]
    node[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value


@pytest.mark.parametrize(("name", "where", "value", "field"), STRICT_CASES,
                         ids=[c[0] for c in STRICT_CASES])
def test_validators_match_the_whole_ascii_value(name: str, where: str, value: Any,
                                                field: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    doc = load_case("seed")
    _set(doc, where, value)
    src = tmp_path / "doc.json"
    src.write_text(json.dumps(doc))
    assert main(["drive", str(src), "--out", str(tmp_path / "d.img")]) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "d.img").exists()


HOSTILE_DOCS: list[tuple[str, str, str]] = [
    ("null", "null", "want a JSON object"),
    ("list", "[1, 2]", "must be a JSON object"),
    ("deep", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("deep-in-field", "{\"instance\": " + "[" * 900 + "]" * 900 + "}", "invalid input"),
    ("long-int", '{"instance": {"launch_index": ' + "9" * 5000 + "}}", "4300"),
]


@pytest.mark.parametrize(("name", "text", "message"), HOSTILE_DOCS,
                         ids=[c[0] for c in HOSTILE_DOCS])
def test_hostile_documents_exit_2_without_traceback(name: str, text: str, message: str,
                                                    tmp_path: Path) -> None:
    src = tmp_path / "doc.json"
    src.write_text(text)
    for args in (["render", str(src), "--print"],
                 ["render", "--network-data", str(src), "--print"]):
        done = subprocess.run([sys.executable, "-m", "netinject", *args],
                              capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert message in done.stderr, done.stderr
        assert len(done.stderr) < 2000  # a quoted value is shortened


@pytest.mark.parametrize("pattern", ["{'a': {1, [2]}}", "{[1]: '0'}", "[1, 2]", "{'x': 'y'}",
                                     "{" * 3000])
def test_bad_ports_pattern_literal_is_an_input_error(pattern: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    doc = load_case("seed")
    doc["system_metadata"]["ports_pattern"] = pattern
    src = tmp_path / "doc.json"
    src.write_text(json.dumps(doc))
    assert main(["render", str(src), "--print"]) == 2
    assert "system_metadata.ports_pattern" in capsys.readouterr().err


@pytest.mark.parametrize("pattern", ["[" * 1100, "[" * 100_000, "{\"a\": " * 1100])
def test_deeply_nested_ports_pattern_is_a_field_error(pattern: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """Issue 20 F1: json.loads raised RecursionError (not a ValueError) on a deeply
    nested ports_pattern, a traceback. The value is quoted shortened."""
    doc = load_case("seed")
    doc["system_metadata"]["ports_pattern"] = pattern
    src = tmp_path / "doc.json"
    src.write_text(json.dumps(doc))
    assert main(["render", str(src), "--print"]) == 2
    shown = "'" + pattern[:179] + f"...<{len(pattern) + 2} characters>"
    assert capsys.readouterr().err == (
        f"netinject: {src}: invalid input (1 error(s)):\n"
        f"  system_metadata.ports_pattern: {shown} is nested too deeply (want a flat "
        "mapping of port id to NIC index)\n")


def test_input_path_that_is_a_directory(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(tmp_path), "--print"]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_render_checks_every_output_path_before_writing(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    out = tmp_path / "out"
    (out / "etc").mkdir(parents=True)
    (out / "etc/network").write_text("a file where a directory must be\n")
    before = tree(out)
    assert main(["render", str(CASES / "seed/instance.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err
    assert "etc/network" in err
    assert "not a directory" in err
    assert tree(out) == before  # etc/hostname (sorted first) was not written either


def test_system_metadata_out_that_is_a_directory_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    sm = tmp_path / "sm"
    sm.mkdir()
    assert main(["render", str(CASES / "seed/instance.json"), "--out", str(out),
                 "--system-metadata-out", str(sm)]) == 2
    assert "--system-metadata-out" in capsys.readouterr().err
    assert not out.exists()


def test_drive_out_that_is_a_directory(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drive", str(CASES / "seed/instance.json"), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_payload_over_the_agents_limit_is_refused_when_the_drive_is_built(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = load_case("seed")
    # /32 host routes in 10.0.0.0/8: ~140 bytes of ENI each, over 1 MiB in all.
    count = guest.MAX_FILE // 120
    doc["subnets"][0]["host_routes"] = [
        {"destination": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32",
         "nexthop": "10.180.80.1"} for n in range(1, count)]
    src = tmp_path / "doc.json"
    src.write_text(json.dumps(doc))
    img = tmp_path / "d.img"
    assert main(["drive", str(src), "--out", str(img)]) == 2
    err = capsys.readouterr().err
    assert "drive:netinject/interfaces" in err
    assert str(guest.MAX_FILE) in err
    assert not img.exists()
    assert list(tmp_path.iterdir()) == [src]


def test_seed_style_has_no_dns_nameservers_line(tmp_path: Path) -> None:
    doc = load_case("seed")
    doc["subnets"][0]["dns_nameservers"] = ["192.0.2.53"]
    src = tmp_path / "doc.json"
    src.write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(["render", str(src), "--style", "seed", "--out", str(out)]) == 0
    eni = (out / "etc/network/interfaces").read_text()
    assert "dns-nameservers" not in eni
    assert (out / "etc/resolv.conf").read_text().endswith("nameserver 192.0.2.53\n")
    # The default style still hands DNS to resolvconf through ENI.
    assert main(["render", str(src), "--out", str(tmp_path / "d")]) == 0
    assert "dns-nameservers 192.0.2.53" in (tmp_path / "d/etc/network/interfaces").read_text()
