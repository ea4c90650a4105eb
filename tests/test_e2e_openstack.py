"""A real QEMU boot of the test-bed guest from a config drive built by nova's OWN code
(InstanceMetadata + ConfigDriveBuilder, iso9660) with the vendordata service's answer, the
service reading the real Keystone, Neutron and Glance of the local peer
(scripts/openstack-peer.sh). The guest holds exactly the injected config."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from helpers.guest import assert_test_bed_network
from helpers.openstack import vendor_json
from netinject.vm.harness import boot, kvm_usable
from netinject.vm.progress import Progress
from netinject.vm.scenarios import Prepared

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.openstack]


@pytest.fixture(scope="module")
def prepared(openstack_peer: Any) -> Iterator[tuple[Prepared, str]]:
    p = Prepared(("nova-vendordata",), Progress())
    accel = "kvm" if kvm_usable(p.images["inject"]) else "tcg"
    try:
        yield p, accel
    finally:
        p.close()


def test_a_guest_boots_from_novas_own_drive(prepared: tuple[Prepared, str]) -> None:
    p, accel = prepared
    drive = p.drives["nova"]
    vendor = vendor_json(drive)  # nova's iso9660 layout, the payload under "netinject"
    assert vendor["netinject"]["format"] == 1
    res = boot(p.spec("nova-vendordata", accel))
    assert_test_bed_network(res)
    result = res.agent_result
    assert result is not None, res.agent_log
    assert result["outcome"] == "installed", res.agent_log
    assert "config drive /dev/vd" in res.agent_log
    assert "(iso9660, label config-2)" in res.agent_log  # nova's drive: no volume set id
