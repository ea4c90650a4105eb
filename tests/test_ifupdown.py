"""Every rendered ENI is parsed by the real ifupdown (`ifup --no-act -i FILE -a`)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import CASES, ifup_no_act, load_case
from netinject.cli import main

ALL = [
    ("seed", "seed", ["ip addr add 10.180.81.249/255.255.254.0 broadcast 10.180.81.255",
                      "ip link set dev eth0 mtu 1400",
                      "ip route add default via 10.180.80.1",
                      "arping -A -U -I eth0 -c 120 10.180.81.249 &",
                      "up route add -net 10.180.8.0 netmask 255.255.252.0 gateway 10.180.80.1"
                      " dev eth0".removeprefix("up ")]),
    ("seed", "default", ["ip route add 10.180.8.0/22 via 10.180.80.1 dev eth0",
                         "ip route add 169.254.169.254/32 via 10.180.80.1 dev eth0",
                         "echo 1 > /proc/sys/net/ipv4/conf/eth0/arp_notify || true"]),
    ("multi-nic-reordered", "default", [
        "ip addr add 198.51.100.20/255.255.255.0 broadcast 198.51.100.255",
        "ip addr add 203.0.113.30/255.255.255.128 broadcast 203.0.113.127",
        "ip addr add 192.0.2.10/255.255.255.0",
        "ip link set dev eth0 mtu 9000",
        "ip route add default via 198.51.100.1",
        "ip route add 10.20.0.0/16 via 203.0.113.126 dev eth1"]),
    ("dual-stack", "default", ["ip -6 addr add 2001:db8:1::10/64",
                               "ip -6 route replace default via 2001:db8:1::1",
                               "ip -6 route add 2001:db8:ff::/48 via 2001:db8:1::fe dev eth0",
                               "net.ipv6.conf.eth1.autoconf=1"]),
    ("dual-stack", "seed", ["route -A inet6 add 2001:db8:ff::/48 gw 2001:db8:1::fe dev eth0"]),
    ("no-gateway", "default", ["ip route add 10.0.0.0/8 via 10.180.80.254 dev eth0"]),
]


@pytest.mark.parametrize(("case", "style", "expected"), ALL)
def test_ifup_accepts_rendered_eni(case: str, style: str, expected: list[str],
                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["render", str(CASES / case / "instance.json"), "--style", style,
                 "--format", "eni", "--out", str(out)]) == 0
    result = ifup_no_act(out / "etc/network/interfaces", tmp_path)
    assert result.returncode == 0, result.stdout
    commands = " ".join(result.stdout.split())
    for cmd in expected:
        assert " ".join(cmd.split()) in commands, (cmd, result.stdout)


# Default-route commands as ifupdown prints them for a ``gateway`` line (it writes
# ``ip route add default`` for inet and ``ip -6 route replace default`` for inet6), and as
# a renderer hook could write them (iproute2 or net-tools, either family).
_DEFAULT_V4 = re.compile(
    r"\bip (?:-4 )?route (?:add|replace|append|change) (?:default|0\.0\.0\.0/0)\b"
    r"|(?:^|[;&|] ?)route (?:-A inet )?add (?:-net )?(?:default|0\.0\.0\.0)\b")
_DEFAULT_V6 = re.compile(
    r"\bip -6 route (?:add|replace|append|change) (?:default|::/0)\b"
    r"|(?:^|[;&|] ?)route -A inet6 add (?:default|::/0)\b")
_DEV = re.compile(r"\bdev (\S+)")


def _multi_nic_gateways_both_families() -> dict[str, Any]:
    """multi-nic-reordered (three NICs, each on an IPv4 subnet with a gateway; its
    ports_pattern makes port 2 eth0, port 3 eth1, port 1 eth2) plus an IPv6 subnet with a
    gateway on the ports that become eth1 and eth2, so each family has gateways on more
    than one NIC, and the lowest-index NIC with one differs between the families."""
    doc: dict[str, Any] = load_case("multi-nic-reordered")
    ports = {p["mac_address"].lower(): p for p in doc["ports"]}
    for n, mac in enumerate(["fa:16:3e:00:00:03", "fa:16:3e:00:00:01"], start=1):
        subnet_id = str(uuid.UUID(int=0x6000 + n))
        doc["subnets"].append({
            "id": subnet_id, "network_id": ports[mac]["network_id"], "ip_version": 6,
            "cidr": f"2001:db8:{n}::/64", "gateway_ip": f"2001:db8:{n}::1",
            "enable_dhcp": True, "dns_nameservers": [], "host_routes": [],
            "ipv6_address_mode": "dhcpv6-stateful", "ipv6_ra_mode": "dhcpv6-stateful"})
        ports[mac]["fixed_ips"].append({"subnet_id": subnet_id,
                                        "ip_address": f"2001:db8:{n}::10"})
    return doc


@pytest.mark.parametrize("style", ["default", "seed"])
def test_only_one_default_route_per_family(style: str, tmp_path: Path,
                                           write_json: Any) -> None:
    """With gateways on several NICs in both families, ifup accepts the file and would
    add exactly one IPv4 and one IPv6 default route, each on the lowest-index NIC whose
    subnet has a gateway (eth0 for IPv4, eth1 for IPv6)."""
    out = tmp_path / "out"
    assert main(["render", str(write_json(_multi_nic_gateways_both_families())),
                 "--style", style, "--format", "eni", "--out", str(out)]) == 0
    result = ifup_no_act(out / "etc/network/interfaces", tmp_path)
    assert result.returncode == 0, result.stdout
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    v4 = [line for line in lines if _DEFAULT_V4.search(line)]
    v6 = [line for line in lines if _DEFAULT_V6.search(line)]
    assert not set(v4) & set(v6)
    # Every line that mentions a default route is one of the two counted forms, so a
    # form the patterns do not know cannot slip past the count.
    assert [line for line in lines if "default" in line] == [
        line for line in lines if line in v4 or line in v6], result.stdout
    assert len(v4) == 1, result.stdout
    assert len(v6) == 1, result.stdout
    assert [_DEV.findall(line) for line in v4 + v6] == [["eth0"], ["eth1"]], result.stdout


def test_network_data_dhcp_stanza_runs_a_dhcp_client(tmp_path: Path) -> None:
    case = CASES / "network-data"
    out = tmp_path / "out"
    assert main(["render", "--network-data", str(case / "network_data.json"),
                 "--format", "eni", "--out", str(out)]) == 0
    result = ifup_no_act(out / "etc/network/interfaces", tmp_path)
    assert result.returncode == 0, result.stdout
    assert "dhclient" in result.stdout
    assert "eth1" in result.stdout
    assert "ip addr add 192.0.2.44/255.255.255.0" in result.stdout


def test_default_style_survives_missing_arping(tmp_path: Path) -> None:
    """The default style's hook lines, run by the same shell ifupdown uses, exit 0 on a
    system without arping (a minimal image has none)."""
    import subprocess

    out = tmp_path / "out"
    assert main(["render", str(CASES / "seed" / "instance.json"), "--format", "eni",
                 "--out", str(out)]) == 0
    text = (out / "etc/network/interfaces").read_text()
    post_up = next(line.strip().removeprefix("post-up ") for line in text.splitlines()
                   if "arping" in line)
    # Same command with arping pointing at a path that does not exist.
    cmd = post_up.replace("/usr/bin/arping", str(tmp_path / "no-such-arping"))
    done = subprocess.run(["/bin/sh", "-c", cmd], check=False, timeout=10)
    assert done.returncode == 0
