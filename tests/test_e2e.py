"""End-to-end: real QEMU boots of a real Debian guest (KVM if usable, else TCG), NIC on a
tap link in a network namespace this test creates; assertions read the guest's own
report from its serial console."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from netinject.render import FORMATS, Options, render_all
from netinject.sources.neutron import parse_document
from netinject.vm import instance as vm
from netinject.vm.harness import BootResult, boot, kvm_usable
from netinject.vm.progress import Progress
from netinject.vm.scenarios import Prepared

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def prepared() -> Iterator[tuple[Prepared, str]]:
    p = Prepared(("inject", "corrupt-drive"), Progress())
    accel = "kvm" if kvm_usable(p.images["inject"]) else "tcg"
    try:
        yield p, accel
    finally:
        p.close()


def _eth0(res: BootResult) -> dict[str, Any]:
    links = res.json_section("ip-addr")
    assert links, res.console[-3000:]
    by_name = {link["ifname"]: link for link in links}
    assert "eth0" in by_name, by_name.keys()
    eth0: dict[str, Any] = by_name["eth0"]
    return eth0


def test_inject_boot_reaches_network_with_injected_config(
        prepared: tuple[Prepared, str]) -> None:
    p, accel = prepared
    res = boot(p.spec("inject", accel))
    assert res.time_to_network_s is not None, res.console[-3000:]
    eth0 = _eth0(res)
    assert eth0["address"] == vm.GUEST_MAC  # the name the udev rule pins to this MAC
    assert eth0["mtu"] == vm.MTU
    v4 = [a for a in eth0["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"]) for a in v4] == [(vm.GUEST_IP, vm.PREFIX)]
    assert not v4[0].get("dynamic")  # static, not a DHCP lease
    routes = {(r["dst"], r.get("gateway"), r.get("dev")) for r in res.json_section("ip-route")}
    assert ("default", vm.HOST_IP, "eth0") in routes
    assert (vm.HOST_ROUTE, vm.HOST_IP, "eth0") in routes
    assert f"nameserver {vm.HOST_IP}" in res.report["resolv"].splitlines()
    assert res.report["hostname"] == "netinject-vm"
    instance = parse_document(vm.document()).instance
    rendered = render_all(instance, FORMATS, Options())
    udev = next(v for k, v in rendered.items() if k.name == "70-persistent-net.rules")
    assert res.report["udev-rules"] == udev.strip()
    log = res.agent_log
    assert f"first boot of instance {vm.INSTANCE_UUID}" in log
    assert "done: 4 file(s) installed" in log
    assert "ActiveState=active" in res.report["networking"]
    assert res.first_garp_s is not None  # the kernel announced the address (arp_notify)


def test_corrupt_drive_steps_aside_and_dhcp_brings_the_network_up(
        prepared: tuple[Prepared, str]) -> None:
    p, accel = prepared
    res = boot(p.spec("corrupt-drive", accel))
    assert res.time_to_network_s is not None, res.console[-3000:]
    log = res.agent_log
    assert "sha256 mismatch for etc/network/interfaces" in log
    assert "stepping aside" in log
    v4 = [a for a in _eth0(res)["addr_info"] if a["family"] == "inet"]
    assert [a["local"] for a in v4] == [vm.GUEST_IP]
    assert v4[0].get("dynamic") is True  # leased from dnsmasq in the namespace
    assert "ActiveState=active" in res.report["networking"]
