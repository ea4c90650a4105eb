"""The boot benchmark's peers in real boots: glean (from PyPI, installed by its own
glean-install) configures the test bed from the same drive's network_data.json that
inject's payload rides on, and a later boot of the inject image is decided by the
launcher alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers.guest import assert_test_bed_network
from netinject.bench.boot import boot_scenario
from netinject.vm.harness import kvm_usable
from netinject.vm.progress import Progress
from netinject.vm.scenarios import Prepared

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def prepared() -> Iterator[tuple[Prepared, str]]:
    p = Prepared(("glean", "inject-later"), Progress())
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
