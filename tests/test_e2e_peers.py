"""The boot benchmark's peers in real boots: glean (from PyPI, installed by its own
glean-install) configures the test bed from the same drive's network_data.json that
inject's payload rides on; beside the agent in one image (inject-glean) glean leaves the
network to the agent on an instance the agent configured, and does it itself where the
agent steps aside; a later boot of the inject image is decided by the launcher alone."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from helpers.guest import assert_test_bed_network
from netinject.bench.boot import boot_scenario
from netinject.vm.harness import boot, kvm_usable
from netinject.vm.progress import Progress
from netinject.vm.scenarios import Prepared

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def prepared() -> Iterator[tuple[Prepared, str]]:
    p = Prepared(("glean", "inject-later", "inject-glean"), Progress())
    accel = "kvm" if kvm_usable(next(iter(p.images.values()))) else "tcg"
    try:
        yield p, accel
    finally:
        p.close()


def test_glean_configures_the_test_bed_from_the_drive(prepared: tuple[Prepared, str]) -> None:
    p, accel = prepared
    res = boot_scenario(p, "glean", accel)
    # Two differences of the peer, not of the drive: glean's Debian (ENI) writer leaves
    # out the link's MTU (1450 in network_data.json), so the NIC keeps 1500; and it adds
    # host routes with net-tools' `route ... || true`, which a minimal Debian image does
    # not have, so the host route is silently missing.
    assert_test_bed_network(res, mtu=1500, host_route=False)
    times = res.unit_times()
    assert "glean-early.service" in times, times
    assert "glean@eth0.service" in times, times
    assert "netinject-result" not in res.agent_log  # no netinject agent in this image


def test_later_boot_is_decided_by_the_launcher(prepared: tuple[Prepared, str]) -> None:
    p, accel = prepared
    res = boot_scenario(p, "inject-later", accel)
    assert_test_bed_network(res)
    result = res.agent_result
    assert result is not None, res.agent_log
    assert result["outcome"] == "unchanged", res.agent_log
    assert "not the first boot of instance" in res.agent_log


def test_beside_glean_the_agent_configures_and_glean_skips_its_network_part(
        prepared: tuple[Prepared, str]) -> None:
    """The agent installs the drive's config and writes glean's switch; glean's unit
    (after the agent: install's drop-in) runs with --skip-network: no interfaces.d file,
    and the guest holds netinject's config exactly (MTU and host route included, which
    glean's own writer leaves out)."""
    p, accel = prepared
    res = boot(p.spec("inject-glean", accel))
    assert_test_bed_network(res)
    log = res.agent_log
    result = res.agent_result
    assert result is not None, log
    assert result["outcome"] == "installed", log
    assert "glean's network config turned off for this instance" in log, log
    times = res.unit_times()
    assert "glean@eth0.service" in times, times
    assert times["netinject.service"][1] <= times["glean@eth0.service"][0], times
    assert "eth0.cfg" not in res.report.get("interfaces-d", ""), res.report
    assert "iface eth0" not in res.report.get("interfaces-d", ""), res.report


def test_beside_glean_a_drive_the_agent_does_not_trust_leaves_glean_in_charge(
        prepared: tuple[Prepared, str]) -> None:
    """The same image with a drive naming another instance: the agent steps aside and
    writes no switch; glean configures eth0 from network_data.json as it does alone (its
    interfaces.d file; its MTU and host-route gaps)."""
    p, accel = prepared
    spec = p.spec("inject-glean", accel)
    other = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
    res = boot(dataclasses.replace(spec, system_uuid=other))
    assert_test_bed_network(res, mtu=1500, host_route=False)
    log = res.agent_log
    assert f"this machine's system UUID is {other}: not trusting it" in log, log
    assert "glean's network config turned off" not in log, log
    assert "iface eth0 inet static" in res.report.get("interfaces-d", ""), res.report
