"""Next to cloud-init in a real guest: the test bed's ifupdown image with the agent AND
Debian's cloud-init kept (ConfigDrive datasource), booted from a drive that carries the
injection payload and user data. The agent installs the static config before
cloud-init's local stage and turns cloud-init's network rendering off by its documented
switch; cloud-init still runs everything else (the user data writes its file) and
reports done without errors; its own network file never appears. Every check reads the
guest's own state through qemu-guest-agent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from netinject.qga import GuestAgent
from netinject.vm import testbed as vm
from netinject.vm.harness import kvm_usable, running
from netinject.vm.progress import Progress
from netinject.vm.scenarios import USER_DATA_MARK, Prepared

pytestmark = [pytest.mark.e2e, pytest.mark.root]

SWITCH = "/etc/cloud/cloud.cfg.d/99-netinject-network.cfg"


@pytest.fixture(scope="module")
def prepared() -> Iterator[tuple[Prepared, str]]:
    p = Prepared(("inject-cloud-init",), Progress())
    accel = "kvm" if kvm_usable(p.images["inject-cloud-init"]) else "tcg"
    try:
        yield p, accel
    finally:
        p.close()


def _ok(ga: GuestAgent, path: str, *args: str, timeout: float = 30) -> str:
    res = ga.exec(path, list(args), timeout=timeout)
    assert res.exitcode == 0, (path, args, res.stdout, res.stderr)
    return res.stdout.decode()


def _monotonic(ga: GuestAgent, unit: str, prop: str) -> int:
    out = _ok(ga, "/usr/bin/systemctl", "show", "-p", prop, unit)
    return int(out.strip().split("=", 1)[1])


def test_the_agent_and_cloud_init_side_by_side(prepared: tuple[Prepared, str]) -> None:
    p, accel = prepared
    with running(p.spec("inject-cloud-init", accel, qga=True)) as guest:
        reply, _ = guest.wait_network()  # no DHCP server: the static address answers
        assert reply is not None, guest.console()[-3000:]
        with GuestAgent.unix(guest.qga_socket, timeout=15) as ga:
            ga.wait_ready(timeout=240)
            status = ga.exec("/usr/bin/cloud-init", ["status", "--wait", "--long"],
                             timeout=600)
            text = status.stdout.decode()
            assert status.exitcode == 0, text + status.stderr.decode()
            assert re.search(r"^status: done$", text, re.M), text
            # The user data ran: cloud-init did everything but the network.
            assert _ok(ga, "/usr/bin/cat", USER_DATA_MARK) == "cloud-init ran the user data\n"
            switch = _ok(ga, "/usr/bin/cat", SWITCH)
            assert switch.endswith("network: {config: disabled}\n")
            assert vm.INSTANCE_UUID in switch
            assert ga.exec("/usr/bin/test", ["-e", "/etc/network/interfaces.d/50-cloud-init"]
                           ).exitcode == 1
            log = _ok(ga, "/usr/bin/cat", "/var/log/cloud-init.log")
            assert "network config disabled by system_cfg" in log, log[-3000:]
            agent = _ok(ga, "/usr/bin/cat", "/var/log/netinject.log")
            assert "outcome=installed" in agent
            assert "cloud-init's network config turned off for this instance" in agent
            # The agent's unit was done before cloud-init's local stage started.
            done = _monotonic(ga, "netinject.service", "ActiveEnterTimestampMonotonic")
            started = _monotonic(ga, "cloud-init-local.service",
                                 "InactiveExitTimestampMonotonic")
            assert 0 < done <= started, (done, started)
            addrs = json.loads(_ok(ga, "/usr/bin/ip", "-j", "-4", "addr", "show", "dev",
                                   "eth0"))
            got = [(a["local"], a["prefixlen"], a.get("dynamic", False))
                   for a in addrs[0]["addr_info"]]
            assert got == [(vm.GUEST_IP, vm.PREFIX, False)], got
