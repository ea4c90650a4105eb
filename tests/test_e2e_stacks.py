"""End-to-end on images without ifupdown: real QEMU boots of Debian guests that bring
their network up with systemd-networkd, netplan (on networkd) or NetworkManager, each
with the agent installed by ``netinject-guest install`` (stack detected). Assertions
read the guest's own report from its serial console."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers.guest import assert_test_bed_network
from netinject.vm import testbed as vm
from netinject.vm.harness import boot, kvm_usable
from netinject.vm.progress import Progress
from netinject.vm.scenarios import NETWORK_UNITS, Prepared

pytestmark = [pytest.mark.e2e, pytest.mark.root]

STACKS = ("networkd", "netplan", "nm")
STACK_FILES = vm.STACK_FILES


@pytest.fixture(scope="module")
def prepared() -> Iterator[tuple[Prepared, str]]:
    p = Prepared(tuple(f"inject-{s}" for s in STACKS), Progress())
    accel = "kvm" if kvm_usable(next(iter(p.images.values()))) else "tcg"
    try:
        yield p, accel
    finally:
        p.close()


@pytest.mark.parametrize("stack", STACKS)
def test_inject_on_each_stack_brings_up_the_injected_config(
        prepared: tuple[Prepared, str], stack: str) -> None:
    p, accel = prepared
    res = boot(p.spec(f"inject-{stack}", accel))
    assert_test_bed_network(res)
    log = res.agent_log
    result = res.agent_result
    assert result is not None, log
    assert result["outcome"] == "installed", log
    assert result["files"] == str(STACK_FILES[stack]), log
    assert f"network stack: {stack}" in log
    times = res.unit_times()
    agent = times["netinject.service"]
    network = times[NETWORK_UNITS[f"inject-{stack}"]]
    assert agent[1] <= network[0], times  # ordered before the stack's service
    if stack == "netplan":
        assert "moved /etc/netplan/50-cloud-init.yaml aside" in log
        assert "ran netplan generate" in log
    # An announcement reached the namespace: the agent's (networkd sends none) or
    # NetworkManager's own.
    assert res.first_garp_s is not None, res.console[-2000:]
    if stack in ("networkd", "netplan"):
        assert "netinject-announce.service" in times, times
