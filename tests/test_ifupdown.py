"""Every rendered ENI is parsed by the real ifupdown (`ifup --no-act -i FILE -a`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CASES, ifup_no_act
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


def test_only_one_default_route_per_family(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["render", str(CASES / "multi-nic-reordered" / "instance.json"),
                 "--format", "eni", "--out", str(out)]) == 0
    result = ifup_no_act(out / "etc/network/interfaces", tmp_path)
    assert result.stdout.count("route add default") == 1


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
