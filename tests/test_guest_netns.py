"""Real kernel NIC renames: veth links with chosen MACs, named in the wrong order, in a
network namespace this test creates; the agent renames them to the pinned names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.guest import AGENT, GUEST_PYTHON, agent_log, instance_doc, make_drive, make_guest

pytestmark = pytest.mark.root


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True,
                          timeout=30).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs as root)")
    name = f"nitest-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _links(ns: str) -> dict[str, dict[str, Any]]:
    """MAC -> {name, up} for the links in the namespace."""
    out = json.loads(_ip("-n", ns, "-j", "link", "show"))
    return {link["address"]: {"name": link["ifname"], "up": "UP" in link["flags"]}
            for link in out if link["ifname"] != "lo"}


def _veth(ns: str, name: str, mac: str, peer: str) -> None:
    _ip("-n", ns, "link", "add", name, "address", mac, "type", "veth", "peer", "name", peer)


def _run_in(ns: str, root: Path) -> subprocess.CompletedProcess[str]:
    """The agent in the namespace. Its sysfs is the guest tree's (the drive's 'ro' and the
    SMBIOS uuid as the test set them) with class/net leading to the real /sys/class/net,
    which `ip netns exec` mounts for the namespace: the renames are real."""
    net = root / "sys/class/net"
    if not net.is_symlink():
        shutil.rmtree(net)
        net.symlink_to("/sys/class/net")
    return subprocess.run(["ip", "netns", "exec", ns, GUEST_PYTHON, "-I", "-S", str(AGENT),
                           "run", "--root", str(root), "--sysfs", str(root / "sys"), "--wait",
                           "0",
                           "--drive", str(root / "dev/vdb")],
                          capture_output=True, text=True, check=False, timeout=60)


# multi-nic-reordered pins eth0 -> ...:02, eth1 -> ...:03, eth2 -> ...:01.
MAC0, MAC1, MAC2 = "fa:16:3e:00:00:02", "fa:16:3e:00:00:03", "fa:16:3e:00:00:01"


def test_agent_swaps_and_renames_real_links(netns: str, tmp_path: Path) -> None:
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    _veth(netns, "eth0", MAC1, "peer0")   # should be eth1
    _veth(netns, "eth1", MAC0, "peer1")   # should be eth0: a swap
    _veth(netns, "ens5", MAC2, "peer2")   # predictable name, should be eth2
    _ip("-n", netns, "link", "set", "eth1", "up")
    before = _links(netns)
    assert before[MAC0] == {"name": "eth1", "up": True}
    done = _run_in(netns, root)
    assert done.returncode == 0, done.stderr
    after = _links(netns)
    assert after[MAC0] == {"name": "eth0", "up": True}   # back up after the rename
    assert after[MAC1] == {"name": "eth1", "up": False}
    assert after[MAC2] == {"name": "eth2", "up": False}
    assert {v["name"] for k, v in after.items() if k not in (MAC0, MAC1, MAC2)} == \
        {"peer0", "peer1", "peer2"}
    log = agent_log(root)
    assert "renamed eth1 -> eth0" in log
    assert "renamed ens5 -> eth2" in log
    assert "3 NIC(s) renamed" in log
    # Second boot: names already right, nothing to do.
    assert _run_in(netns, root).returncode == 0
    assert _links(netns) == after


def test_foreign_nic_holding_a_pinned_name_changes_nothing(netns: str, tmp_path: Path) -> None:
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    eni = (root / "etc/network/interfaces").read_bytes()
    _veth(netns, "ens3", MAC0, "peer0")
    _veth(netns, "eth0", "fa:16:3e:99:99:99", "peer1")   # not in the manifest
    before = _links(netns)
    assert _run_in(netns, root).returncode == 0
    assert _links(netns) == before
    assert (root / "etc/network/interfaces").read_bytes() == eni
    assert not (root / "var/lib/netinject/instance-id").exists()
    assert "eth0 is held by fa:16:3e:99:99:99, a NIC the manifest does not list" in agent_log(root)
