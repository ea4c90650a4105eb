"""End-to-end: real QEMU boots of a real Debian guest (KVM if usable, else TCG), NIC on a
tap link in a network namespace this test creates; assertions read the guest's own
report from its serial console."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.guest import assert_test_bed_network
from netinject.cli import main
from netinject.hotplug import QmpAttacher, with_port
from netinject.qga import GuestAgent
from netinject.render import FORMATS, Options, render_all
from netinject.sources.neutron import parse_document
from netinject.vm import testbed as vm
from netinject.vm.harness import (
    BootResult,
    BootSpec,
    _dnsmasq,
    boot,
    first_reply,
    kvm_usable,
    running,
    start_prober,
)
from netinject.vm.image import DHCP_ENI
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
    assert_test_bed_network(res)
    instance = parse_document(vm.document()).instance
    rendered = render_all(instance, FORMATS, Options())
    udev = next(v for k, v in rendered.items() if k.name == "70-persistent-net.rules")
    assert res.report["udev-rules"] == udev.strip()
    log = res.agent_log
    # Timings count from the launcher's first line: loading the agent is included.
    # The launcher asked for the lowest real-time priority under the unit's RLIMIT_RTTIME
    # bound, and got it.
    assert re.match(r"netinject: \[\s*[0-9.]+ ms\] netinject-guest \S+ loaded \(real-time "
                    r"priority, bounded\)\n", log), log
    result = res.agent_result
    assert result is not None, log
    assert result["outcome"] == "installed", result
    assert result["files"] == "4", result
    assert f"first boot of instance {vm.INSTANCE_UUID}" in log
    assert "done: 4 file(s) installed" in log
    # The done line reports the agent's CPU time, part of its elapsed time (one thread).
    cpu, elapsed = res.agent_cpu_ms(), res.agent_cost_ms()
    assert cpu is not None, log
    assert elapsed is not None, log
    assert 0 < cpu <= elapsed, log
    assert "ActiveState=active" in res.report["networking"]
    assert res.first_garp_s is not None  # the kernel announced the address (arp_notify)


def test_drive_for_another_instance_is_not_trusted(prepared: tuple[Prepared, str]) -> None:
    """A self-consistent drive whose manifest names another instance than the machine's
    SMBIOS system UUID (what a user-attached volume labelled config-2 would be): the agent
    steps aside and the image's DHCP brings the network up."""
    p, accel = prepared
    other = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
    res = boot(BootSpec(p.images["inject"], p.drives["inject"], True, accel,
                        system_uuid=other))
    assert res.time_to_network_s is not None, res.console[-3000:]
    log = res.agent_log
    assert f"this machine's system UUID is {other}: not trusting it" in log, log
    assert "stepping aside" in log
    v4 = [a for a in _eth0(res)["addr_info"] if a["family"] == "inet"]
    assert v4[0].get("dynamic") is True  # leased from dnsmasq, not injected


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



def test_hotplug_second_nic_comes_up_static_without_dhcp(
        prepared: tuple[Prepared, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Boot inject with the agent channel; hot-plug eth1 (config first, then QMP attach):
    it answers ARP with its static address and no DHCP server exists on its link. Then,
    for comparison, the same NIC hot-plugged with a DHCP config and dnsmasq answering."""
    p, accel = prepared
    spec = dataclasses.replace(
        p.spec("inject", accel), qga=True,
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
        # QEMU's agent socket takes one client at a time: each step opens its own.

        def agent() -> GuestAgent:
            return GuestAgent.unix(guest.qga_socket, timeout=10)

        with agent() as ga:
            ga.wait_ready()
        prober, events = start_prober(guest.ns, "tap1", vm.HOTPLUG_IP, vm.HOTPLUG_HOST_IP, 120)
        try:
            t0 = time.monotonic()
            rc = main(["hotplug", "attach", str(files["doc"]), "--port", str(files["port"]),
                       "--subnet", str(files["subnet"]), "--network", str(files["network"]),
                       "--qga", str(guest.qga_socket), "--qmp", str(guest.qmp_socket),
                       "--tap", "tap1", "--system-metadata-out", str(tmp_path / "sm.json")])
            assert rc == 0
            static_s = first_reply(events, t0)
            attached = float(re.search(r"attached at t=([0-9.]+)", capsys.readouterr().out)
                             .group(1))  # type: ignore[union-attr]
            static_attach_s = first_reply(events, attached)
        finally:
            prober.terminate()
        assert static_s is not None
        with agent() as ga:
            names = {i["name"]: i for i in ga.network_interfaces()}
            assert "eth1" in names
            assert vm.HOTPLUG_IP in {a["ip-address"] for a in names["eth1"]["ip-addresses"]}
            assert names["eth1"]["hardware-address"] == vm.HOTPLUG_MAC
            eni = ga.read_file("/etc/network/interfaces").decode()
            assert "iface eth1 inet static" in eni
            # No DHCP client ever ran for eth1.
            assert ga.exec("/usr/bin/pgrep", ["-f", "dhclient.*eth1"]).exitcode == 1
        sysmeta = json.loads((tmp_path / "sm.json").read_text())
        assert json.loads(sysmeta["ports_pattern"]) == {vm.PORT_ID: "0",
                                                       vm.HOTPLUG_PORT_ID: "1"}

        # Detach: NIC gone, its config and rule gone, its index freed.
        assert main(["hotplug", "detach", str(files["doc_with_port"]), "--port-id",
                     vm.HOTPLUG_PORT_ID, "--qga", str(guest.qga_socket), "--qmp",
                     str(guest.qmp_socket), "--system-metadata-out",
                     str(tmp_path / "sm2.json")]) == 0
        sysmeta = json.loads((tmp_path / "sm2.json").read_text())
        assert json.loads(sysmeta["ports_pattern"]) == {vm.PORT_ID: "0"}
        with agent() as ga:
            assert "eth1" not in ga.read_file("/etc/network/interfaces").decode()
            assert vm.HOTPLUG_MAC not in ga.read_file(
                "/etc/udev/rules.d/70-persistent-net.rules").decode()
            deadline = time.monotonic() + 30
            while "eth1" in {i["name"] for i in ga.network_interfaces()}:
                assert time.monotonic() < deadline, "eth1 still present after detach"
                time.sleep(0.2)

            # The same NIC hot-plugged the DHCP way, for comparison.
            attacher = QmpAttacher(str(guest.qmp_socket))
            instance = parse_document(json.loads(files["doc_with_port"].read_text())).instance
            nic = next(n for n in instance.nics if n.name == "eth1")
            ga.write_file("/etc/network/interfaces", (
                DHCP_ENI + "\nallow-hotplug eth1\niface eth1 inet dhcp\n").encode())
        dnsmasq = _dnsmasq(guest.ns, guest.workdir, tap="tap1", ip=vm.HOTPLUG_IP,
                           mac=vm.HOTPLUG_MAC, router=vm.HOTPLUG_HOST_IP)
        prober, events = start_prober(guest.ns, "tap1", vm.HOTPLUG_IP, vm.HOTPLUG_HOST_IP, 120)
        try:
            t0 = time.monotonic()
            attacher.attach(nic, "tap1")
            dhcp_s = first_reply(events, t0)
        finally:
            prober.terminate()
            dnsmasq.terminate()
        assert dhcp_s is not None
        assert static_attach_s is not None
        with capsys.disabled():
            print(f"\nhot-plug to first ARP answer: static {static_s:.2f} s from the request "
                  f"(config writes included), {static_attach_s:.2f} s from the attach; "
                  f"DHCP {dhcp_s:.2f} s from the attach")


def _netns(pid: int) -> set[str]:
    """The namespaces the harness in process ``pid`` made (other boots may run beside
    this test: pytest-xdist)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0] for line in out.splitlines()
            if line.startswith(f"ni-{pid}-")}


def _qemu_children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", "qemu-system"], capture_output=True,
                         text=True, check=False).stdout
    return [int(p) for p in out.split()]


def test_sigterm_during_a_boot_cleans_up(prepared: tuple[Prepared, str]) -> None:
    """`netinject bench boot` killed with SIGTERM mid-boot (a CI timeout, systemd) stops
    QEMU, dnsmasq and the prober and removes its network namespace, like Ctrl-C."""
    proc = subprocess.Popen([sys.executable, "-m", "netinject", "bench", "boot",
                             "--scenarios", "dhcp", "--runs", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        qemu: list[int] = []
        while time.monotonic() < deadline and not qemu:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            qemu = _qemu_children(proc.pid)
            time.sleep(0.2)
        assert qemu, "QEMU never started"
        assert _netns(proc.pid), "no namespace was created"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        left_ns = _netns(proc.pid)
        left_qemu = [pid for pid in qemu if Path(f"/proc/{pid}").exists()]
        for pid in left_qemu:  # leave the machine clean even when the test fails
            os.kill(pid, signal.SIGKILL)
        for ns in left_ns:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    assert proc.returncode == 130, err
    assert "netinject: interrupted" in err
    assert not left_ns
    assert not left_qemu
