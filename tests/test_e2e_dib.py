"""diskimage-builder with netinject's element (elements/netinject): a real
``disk-image-create -t tar debian-minimal netinject-testbed netinject`` (diskimage-builder
from PyPI, the machine's own Debian mirrors), partitionless, unpacked into the test bed's
ext4 image and booted with its own kernel and initrd (netinject.vm.dib). The element
installs the agent from the bundle with the image's own python3 in DIB's chroot: the
agent is precompiled, so its first boot takes real-time priority; the guest holds the
drive's config exactly, from its own report. A cold build takes a few minutes (cached by
its recipe), so it stays out of the fast run."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.guest import assert_test_bed_network
from netinject.vm import testbed as vm
from netinject.vm.dib import build_dib_image
from netinject.vm.harness import BootSpec, boot, kvm_usable
from netinject.vm.progress import Progress
from netinject.vm.scenarios import build_drive

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.releases]


def test_an_image_built_by_diskimage_builder_with_the_element_injects(
        tmp_path: Path) -> None:
    image = build_dib_image(Progress())
    log = (image.image.parent / "disk-image-create.log")
    if log.exists():  # (a cached build keeps its log)
        text = log.read_text(errors="replace")
        assert "network stack: ifupdown" in text
        assert "precompiled /usr/lib/netinject/__pycache__/netinject_guest.cpython-" in text
    accel = "kvm" if kvm_usable(image) else "tcg"
    # (debian-minimal's image also starts systemd-networkd-wait-online, which manages
    # nothing here and waits out its 2-minute timeout before boot counts as finished:
    # the report comes that much later, whoever configures the network.)
    res = boot(BootSpec(image, build_drive("inject", tmp_path / "drive.img"), False, accel,
                        report_timeout=300.0))
    assert_test_bed_network(res)
    agent = res.agent_log
    result = res.agent_result
    assert result is not None, agent
    assert result["outcome"] == "installed", agent
    assert f"first boot of instance {vm.INSTANCE_UUID}" in agent
    assert "(real-time priority, bounded)" in agent  # precompiled by the element
    assert "VERSION_CODENAME=bookworm" in res.report.get("os-release", "")
    times = res.unit_times()
    assert times["netinject.service"][1] <= times["networking.service"][0], times
