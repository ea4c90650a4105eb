"""The agent's live changes (guest/live.py) below the real-guest tests: which NICs a new
manifest changes, which of its stack's files go with a removed NIC, and the running
state read from the kernel (real ``ip`` on veth links in a network namespace this test
creates, documentation addresses)."""

from __future__ import annotations

import ast
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from netinject.guest import contract, live
from netinject.guest.stacks import IFUPDOWN, NETWORKD, Changes, Stack

MAC0, MAC1 = "fa:16:3e:00:00:01", "fa:16:3e:00:00:02"


def facts(name: str, mac: str, *addrs: str, mtu: int | None = 1500,
          routes: tuple[tuple[str, str], ...] = (), dns: tuple[str, ...] = ()
          ) -> contract.NicFacts:
    f = contract.NicFacts(name, mac)
    f.mtu, f.addrs, f.routes, f.dns = mtu, list(addrs), list(routes), list(dns)
    return f


def test_changes_name_only_the_nics_whose_facts_differ() -> None:
    old = {"eth0": facts("eth0", MAC0, "192.0.2.10/24"),
           "eth1": facts("eth1", MAC1, "198.51.100.10/24")}
    new = {"eth0": facts("eth0", MAC0, "192.0.2.10/24", dns=("192.0.2.53",)),
           "eth2": facts("eth2", "fa:16:3e:00:00:03", "203.0.113.10/24")}
    changes = live.changes_between("/nonexistent", old, new)
    assert (changes.added, changes.changed, changes.removed) == (["eth2"], ["eth0"], ["eth1"])
    assert str(changes) == "added eth2; changed eth0; removed eth1"
    undo = changes.reversed()
    assert (undo.added, undo.changed, undo.removed) == (["eth1"], ["eth0"], ["eth2"])
    same = live.changes_between("/nonexistent", new, new)
    assert not same
    assert str(same) == "no NIC"
    # A MAC moved to another name, an MTU, a route: each a change of that NIC.
    for other in (facts("eth0", MAC1, "192.0.2.10/24", dns=("192.0.2.53",)),
                  facts("eth0", MAC0, "192.0.2.10/24", mtu=1400, dns=("192.0.2.53",)),
                  facts("eth0", MAC0, "192.0.2.10/24", dns=("192.0.2.53",),
                        routes=(("198.51.100.0/24", "192.0.2.1"),))):
        assert live.changes_between("/x", new, {**new, "eth0": other}).changed == ["eth0"]


def test_without_a_record_every_nic_is_taken_as_changed() -> None:
    new = {"eth0": facts("eth0", MAC0, "192.0.2.10/24")}
    changes = live.changes_between("/x", None, new)
    assert (changes.added, changes.changed, changes.removed) == ([], ["eth0"], [])


def _manifest(stack: Stack, nics: list[str]) -> bytes:
    files = [(f"etc/systemd/network/10-netinject-{n}.network", f"10-netinject-{n}.network",
              0o644, "0" * 64) for n in nics]
    files.append(("etc/hostname", "hostname", 0o644, "0" * 64))
    return contract.format_manifest(
        "1e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0", "default", "netinject 0.2.0", files,
        [(n, f"fa:16:3e:00:00:0{i + 1}") for i, n in enumerate(nics)],
        facts=[facts(n, f"fa:16:3e:00:00:0{i + 1}") for i, n in enumerate(nics)]).encode()


def test_a_removed_nics_files_of_the_images_stack_go_with_it() -> None:
    old = _manifest(NETWORKD, ["eth0", "eth1"])
    new = contract.parse_manifest(_manifest(NETWORKD, ["eth0"]))
    manifest = contract.Manifest(new.uuid, [contract.Entry(f.path, b"", f.mode)
                                            for f in new.files], new.nics, facts=new.facts)
    assert live.stale_files(old, manifest, NETWORKD) == [
        "etc/systemd/network/10-netinject-eth1.network"]
    # Another stack's files, and shared ones, are never this stack's to remove.
    assert live.stale_files(old, manifest, IFUPDOWN) == []
    assert live.stale_files(None, manifest, NETWORKD) == []


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with a veth pair (ni-a, ni-b): ni-a holds documentation
    addresses, routes and an MTU, as a configured NIC would."""
    ns = f"ni-live-{uuid.uuid4().hex[:6]}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)

    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ip("link", "add", "ni-a", "type", "veth", "peer", "name", "ni-b")
        ip("link", "set", "ni-a", "mtu", "1400")
        ip("addr", "add", "192.0.2.10/24", "dev", "ni-a")
        ip("addr", "add", "2001:db8::10/64", "dev", "ni-a", "nodad")
        ip("link", "set", "ni-a", "up")
        ip("link", "set", "ni-b", "up")
        ip("route", "add", "default", "via", "192.0.2.1", "dev", "ni-a", "onlink")
        ip("route", "add", "198.51.100.0/24", "via", "192.0.2.1", "dev", "ni-a")
        ip("route", "add", "203.0.113.7", "via", "192.0.2.1", "dev", "ni-a")
        ip("-6", "route", "add", "2001:db8:ff::/48", "via", "2001:db8::1", "dev", "ni-a")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


RUNNING = """
import sys
sys.path.insert(0, {src!r})
from netinject.guest import live
addrs, routes, mtu = live.running("/", "ni-a")
print(sorted(addrs)); print(sorted(routes)); print(mtu)
"""


def _in_ns(ns: str, code: str) -> list[str]:
    from pathlib import Path

    src = str(Path(__file__).parent.parent / "src")
    done = subprocess.run(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c",
                           code.format(src=src)], capture_output=True, text=True, check=True,
                          timeout=60)
    return done.stdout.splitlines()


@pytest.mark.root
def test_the_running_state_is_read_from_the_kernel(netns: str) -> None:
    addrs, routes, mtu = _in_ns(netns, RUNNING)
    assert "'192.0.2.10/24'" in addrs
    assert "'2001:db8::10/64'" in addrs
    assert ast.literal_eval(routes) == sorted([
        ("0.0.0.0/0", "192.0.2.1"), ("198.51.100.0/24", "192.0.2.1"),
        ("203.0.113.7/32", "192.0.2.1"), ("2001:db8:ff::/48", "2001:db8::1")])
    assert mtu == "1400"


CHECK = """
import sys
sys.path.insert(0, {src!r})
from netinject.guest import contract, live
from netinject.guest.log import Log
from netinject.guest.stacks import IFUPDOWN, Changes
want = contract.NicFacts("ni-a", "fa:16:3e:00:00:01")
want.mtu = {mtu}
want.addrs = ["192.0.2.10/24", "2001:db8::10/64", "slaac"]
want.routes = [("0.0.0.0/0", "192.0.2.1"), ("198.51.100.0/24", "192.0.2.1")]
gone = contract.NicFacts("ni-a", "fa:16:3e:00:00:01")
gone.addrs = {gone!r}
try:
    live.check("/", IFUPDOWN, Changes("/", [], ["ni-a"], []), {{"ni-a": want}},
               {{"ni-a": gone}}, Log("/nonexistent", True), timeout=0.5)
    print("matches")
except contract.AgentError as exc:
    print(exc)
"""


@pytest.mark.root
@pytest.mark.parametrize(("mtu", "gone", "said"), [
    (1400, ["192.0.2.99/24"], "matches"),
    (1450, [], "ni-a: MTU 1400, not 1450"),
    (1400, ["2001:db8::10/64", "192.0.2.77/24"], "matches"),  # (kept: still wanted)
])
def test_the_check_compares_the_running_state_with_the_facts(
        netns: str, mtu: int, gone: list[str], said: str) -> None:
    out = _in_ns(netns, CHECK.replace("{mtu}", str(mtu)).replace("{gone!r}", repr(gone)))
    assert said in out[-1], out


@pytest.mark.root
def test_an_old_address_still_there_is_a_mismatch(netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "addr", "add", "192.0.2.99/24", "dev", "ni-a"],
                   check=True)
    out = _in_ns(netns, CHECK.replace("{mtu}", "1400").replace("{gone!r}",
                                                                repr(["192.0.2.99/24"])))
    assert "still has 192.0.2.99/24" in out[-1], out


def test_changes_present_are_the_nics_the_kernel_has(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    (root / "sys/class/net/eth0").mkdir(parents=True)
    changes = Changes(str(root), ["eth1"], ["eth0"], [])
    assert changes.present(changes.added + changes.changed) == ["eth0"]
