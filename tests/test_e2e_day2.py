"""Day 2 on every stack, in real guests (QEMU, the test bed's images with the agent):
a NIC hot-plugged through QMP comes up with its static address and answers ARP with no
DHCP server on its link; detached, its files and udev rule are gone; a change of the
first NIC's subnet and network (a host route and a DNS server added, the MTU changed)
reaches the running guest through qemu-guest-agent as one transaction; a change the
stack refuses is undone, files and running state. Every check reads the guest's own
state (ip -j, its files) through qemu-guest-agent."""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netinject.cli import main
from netinject.guest import contract
from netinject.hotplug import (
    HOTPLUG_FORMATS,
    ApplyOutcome,
    GuestSide,
    apply_in_guest,
    with_port,
)
from netinject.openstack.metadata_bed import ETH1_FILES, SHARED_FILE
from netinject.qga import GuestAgent
from netinject.render import Files, Options, render_all
from netinject.sources.neutron import parse_document
from netinject.vm import testbed as vm
from netinject.vm.harness import first_reply, kvm_usable, running, start_prober
from netinject.vm.progress import Progress
from netinject.vm.scenarios import Prepared

pytestmark = [pytest.mark.e2e, pytest.mark.root]

VARIANTS = vm.INJECT_VARIANTS
NEW_ROUTE, NEW_DNS = vm.NEW_ROUTE, vm.NEW_DNS
NEW_MTU = 1400


@pytest.fixture(scope="module")
def prepared() -> Iterator[tuple[Prepared, str]]:
    p = Prepared(tuple(VARIANTS.values()), Progress())
    accel = "kvm" if kvm_usable(next(iter(p.images.values()))) else "tcg"
    try:
        yield p, accel
    finally:
        p.close()


def changed_document() -> dict[str, Any]:
    """The test bed's instance after an operator's change in Neutron: its subnet has one
    more host route and DNS server, its network a smaller MTU."""
    doc = copy.deepcopy(vm.document())
    doc["subnets"][0]["host_routes"].append({"destination": NEW_ROUTE,
                                             "nexthop": vm.HOST_IP})
    doc["subnets"][0]["dns_nameservers"].append(NEW_DNS)
    doc["networks"][0]["mtu"] = NEW_MTU
    return doc


# Each stack's MTU line, and the value no stack can take (over 65535, what an IP link's
# MTU field holds): the config the stack refuses, written by hand (netinject's renderer
# would never write it; the manifest still says 1400, as valid facts).
MTU_LINES = {"etc/network/interfaces": "    mtu ", "etc/systemd/network/": "MTUBytes=",
             "etc/netplan/": "      mtu: ", "etc/NetworkManager/": "mtu="}


REFUSED_MTU = 1300  # (what the manifest says: eth0 changes, so it is brought up again)


def refused() -> tuple[Any, Files]:
    """The instance with eth0's MTU changed again, and its files with every stack's MTU
    line for eth0 set to 70000 instead."""
    doc = changed_document()
    doc["networks"][0]["mtu"] = REFUSED_MTU
    instance = parse_document(doc).instance
    out = {}
    for path, text in render_all(instance, HOTPLUG_FORMATS, Options()).items():
        prefix = next((v for k, v in MTU_LINES.items() if str(path).startswith(k)), None)
        if prefix is not None and f"{prefix}{REFUSED_MTU}" in text:
            text = text.replace(f"{prefix}{REFUSED_MTU}", f"{prefix}70000", 1)
        out[path] = text
    assert sum("70000" in t for t in out.values()) == 4, "one MTU line per stack"
    return instance, out


def _state(ga: GuestAgent, stack: str) -> dict[str, Any]:
    """What the guest runs and has: eth0's addresses, routes and MTU, and the files of
    its stack's config, the udev rules and resolv.conf."""
    paths = [SHARED_FILE.get(stack, ""), "/etc/udev/rules.d/70-persistent-net.rules",
             "/etc/resolv.conf", *{
                 "networkd": ("/etc/systemd/network/10-netinject-eth0.network",),
                 "nm": ("/etc/NetworkManager/system-connections/netinject-eth0.nmconnection",),
             }.get(stack, ())]
    return {
        "addrs": sorted((a["local"], a["prefixlen"]) for a in
                        _ip(ga, "addr", "show", "dev", "eth0")[0]["addr_info"]
                        if a["family"] == "inet"),
        "routes": sorted((r["dst"], r.get("gateway", "")) for r in
                         _ip(ga, "route", "show", "dev", "eth0")),
        "mtu": _ip(ga, "link", "show", "dev", "eth0")[0]["mtu"],
        "files": {path: ga.read_file(path) for path in paths if path},
    }


def _ip(ga: GuestAgent, *args: str) -> Any:
    res = ga.exec("/usr/bin/ip", ["-j", *args])
    assert res.exitcode == 0, res.stderr
    return json.loads(res.stdout or b"[]")


def _exists(ga: GuestAgent, path: str) -> bool:
    return ga.exec("/usr/bin/test", ["-e", path]).exitcode == 0


def _wait(what: str, ok: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


@pytest.mark.parametrize("stack", list(VARIANTS))
def test_hotplug_detach_and_a_neutron_change_on_each_stack(
        prepared: tuple[Prepared, str], stack: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    p, accel = prepared
    spec = dataclasses.replace(p.spec(VARIANTS[stack], accel), qga=True,
                               extra_taps=(("tap1", f"{vm.HOTPLUG_HOST_IP}/24"),))
    port, subnet, network = vm.hotplug_port()
    files = {}
    for name, obj in (("doc", vm.document()), ("port", port), ("subnet", subnet),
                      ("network", network),
                      ("doc_with_port", with_port(vm.document(), port, [subnet], [network]))):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(obj))
    with running(spec) as guest:
        reply, _ = guest.wait_network()
        assert reply is not None, guest.console()[-3000:]

        def agent() -> GuestAgent:
            return GuestAgent.unix(guest.qga_socket, timeout=15)

        with agent() as ga:
            ga.wait_ready()
            ga.exec("/usr/bin/true", [])

        # 1. Attach: config first, then the NIC; no DHCP server on tap1.
        prober, events = start_prober(guest.ns, "tap1", vm.HOTPLUG_IP, vm.HOTPLUG_HOST_IP,
                                      120)
        try:
            t0 = time.monotonic()
            assert main(["hotplug", "attach", str(files["doc"]), "--port", str(files["port"]),
                         "--subnet", str(files["subnet"]), "--network",
                         str(files["network"]), "--qga", str(guest.qga_socket), "--qmp",
                         str(guest.qmp_socket), "--tap", "tap1"]) == 0, \
                guest.console()[-3000:]
            arp_s = first_reply(events, t0, 60)
            assert arp_s is not None, guest.console()[-2000:]
        finally:
            prober.terminate()
        with agent() as ga:
            eth1 = _ip(ga, "addr", "show", "dev", "eth1")[0]
            assert eth1["address"] == vm.HOTPLUG_MAC
            assert [(a["local"], a["prefixlen"]) for a in eth1["addr_info"]
                    if a["family"] == "inet"] == [(vm.HOTPLUG_IP, 24)]
            assert not any(a.get("dynamic") for a in eth1["addr_info"]
                           if a["family"] == "inet")
            for path in ETH1_FILES[stack]:
                assert _exists(ga, path), path
            # The first NIC was not touched: the same address, no new lease.
            eth0 = _ip(ga, "addr", "show", "dev", "eth0")[0]
            assert (vm.GUEST_IP, vm.PREFIX) in {(a["local"], a["prefixlen"])
                                                for a in eth0["addr_info"]}

        # 2. Detach: the NIC first, then its files and rule; the index is freed.
        assert main(["hotplug", "detach", str(files["doc_with_port"]), "--port-id",
                     vm.HOTPLUG_PORT_ID, "--qga", str(guest.qga_socket), "--qmp",
                     str(guest.qmp_socket), "--system-metadata-out",
                     str(tmp_path / "sm.json")]) == 0
        assert json.loads(json.loads((tmp_path / "sm.json").read_text())["ports_pattern"]) \
            == {vm.PORT_ID: "0"}
        with agent() as ga:
            _wait("eth1 still there after detach",
                  lambda: "eth1" not in {i["name"] for i in ga.network_interfaces()})
            for path in ETH1_FILES[stack]:
                assert not _exists(ga, path), path
            if stack in SHARED_FILE:
                assert "eth1" not in ga.read_file(SHARED_FILE[stack]).decode()
            assert vm.HOTPLUG_MAC not in ga.read_file(
                "/etc/udev/rules.d/70-persistent-net.rules").decode()

        # 3. A Neutron change reaches the running guest: netinject sync, as an operator
        # runs it (a dry run first: it shows the change and touches nothing).
        files["changed"] = tmp_path / "changed.json"
        files["changed"].write_text(json.dumps(changed_document()))
        sync_args = ["sync", str(files["changed"]), "--qga", str(guest.qga_socket)]
        capsys.readouterr()
        assert main([*sync_args, "--dry-run"]) == 0
        dry = capsys.readouterr().out.splitlines()
        with agent() as ga:
            assert _ip(ga, "link", "show", "dev", "eth0")[0]["mtu"] != NEW_MTU
        t0 = time.monotonic()
        assert main(sync_args) == 0, guest.console()[-3000:]
        sync_s = time.monotonic() - t0
        out = capsys.readouterr().out.splitlines()
        for said in (dry, out):
            for line in (f"    + route {NEW_ROUTE} via {vm.HOST_IP}",
                         f"    + DNS server {NEW_DNS}"):
                assert line in said, said
            assert any(f"-> {NEW_MTU}" in line for line in said), said
        assert any(line.startswith("applied: ") for line in out), out
        with agent() as ga:
            routes = {(r["dst"], r.get("gateway")) for r in
                      _ip(ga, "route", "show", "dev", "eth0")}
            assert (NEW_ROUTE, vm.HOST_IP) in routes, routes
            assert (vm.HOST_ROUTE, vm.HOST_IP) in routes, routes
            assert ("default", vm.HOST_IP) in routes, routes
            assert _ip(ga, "link", "show", "dev", "eth0")[0]["mtu"] == NEW_MTU
            resolv = ga.read_file("/etc/resolv.conf").decode().splitlines()
            assert f"nameserver {NEW_DNS}" in resolv, resolv
            eth0 = _ip(ga, "addr", "show", "dev", "eth0")[0]
            assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"]
                    if a["family"] == "inet"] == [(vm.GUEST_IP, vm.PREFIX)]
            good = _state(ga, stack)

        # 4. A change the stack refuses (an MTU no link can have) is undone: files and
        # running state as they were.
        instance, bad_files = refused()
        with agent() as ga:
            undone = apply_in_guest(ga, instance, Options(), GuestSide(), bad_files)
        assert undone.outcome is ApplyOutcome.UNCHANGED, (undone.detail,
                                                          guest.console()[-3000:])
        assert undone.guest == contract.Outcome.ROLLED_BACK, undone.detail
        with agent() as ga:
            assert _state(ga, stack) == good
    with capsys.disabled():
        print(f"\n{stack}: hot-plug to first ARP answer {arp_s:.2f} s from the request; "
              f"a Neutron change applied in {sync_s:.2f} s")
