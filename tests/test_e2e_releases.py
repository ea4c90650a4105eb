"""End-to-end on the Debian releases around bookworm: real QEMU boots of Debian 11
(bullseye: Python 3.9, systemd 247, netplan 0.101, NetworkManager 1.30) and Debian 13
(trixie: Python 3.13, systemd 257, netplan 1.1, NetworkManager 1.52) images, built from
each release's own packages (``inject-<stack>@<release>``), every stack the release
ships. Per release and stack: the first boot installs the drive's config and a later
boot of the same disk keeps it (the launcher decides alone); per release a drive for
another instance and a drive without a payload (an image not marked support_inject_ip)
leave the image's DHCP in charge. Assertions read the guest's own report (addresses,
routes, names, DNS, hostname, unit times) from its serial console.

Marked ``releases`` (``pytest -m releases``; scripts/test.sh leaves them out to keep CI
within its hour), but for one stack per release that scripts/test.sh does boot
(prewarm.CI_RELEASE_VARIANTS: netplan on Debian 11, systemd-networkd on Debian 13)."""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.guest import assert_test_bed_network
from netinject.vm import testbed as vm
from netinject.vm.harness import BootResult, BootSpec, boot, kvm_usable
from netinject.vm.prewarm import CI_RELEASE_VARIANTS
from netinject.vm.progress import Progress
from netinject.vm.scenarios import Prepared, scenario

pytestmark = [pytest.mark.e2e, pytest.mark.root]

RELEASES = ("bullseye", "trixie")
# Stack -> its inject variant.
STACKS = vm.INJECT_VARIANTS
STACK_FILES = vm.STACK_FILES  # (the same on every release)
OTHER_UUID = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"

_prepared: dict[str, tuple[Prepared, str]] = {}


def _stack_params() -> list[Any]:
    """(release, stack), marked ``releases`` unless scripts/test.sh boots it."""
    return [pytest.param(r, s, id=f"{r}-{s}",
                         marks=() if f"{v}@{r}" in CI_RELEASE_VARIANTS
                         else (pytest.mark.releases,))
            for r in RELEASES for s, v in STACKS.items()]


@pytest.fixture(scope="module")
def release_images() -> Iterator[dict[str, tuple[Prepared, str]]]:
    """The images and drives of each test's scenarios, built on first use
    (prepared_for), closed at the module's end."""
    try:
        yield _prepared
    finally:
        for p, _accel in _prepared.values():
            p.close()
        _prepared.clear()


def prepared_for(images: dict[str, tuple[Prepared, str]], *names: str
                 ) -> tuple[Prepared, str]:
    """The images and drives of these scenarios (only theirs: a run of one test builds
    one release's base of one stack, not all of them)."""
    key = ",".join(names)
    if key not in images:
        p = Prepared(names, Progress())
        accel = "kvm" if kvm_usable(next(iter(p.images.values()))) else "tcg"
        images[key] = (p, accel)
    return images[key]


def _eth0_v4(res: BootResult) -> list[dict[str, Any]]:
    links = {link["ifname"]: link for link in res.json_section("ip-addr") or []}
    assert "eth0" in links, res.console[-3000:]
    return [a for a in links["eth0"]["addr_info"] if a["family"] == "inet"]


def _check_release(res: BootResult, release: str) -> None:
    """The guest really is that release (its os-release, read by the report)."""
    assert f"VERSION_CODENAME={release}" in res.report.get("os-release", ""), \
        res.report.get("os-release")


@pytest.mark.parametrize(("release", "stack"), _stack_params())
def test_first_and_later_boot_on_each_stack(
        release_images: dict[str, tuple[Prepared, str]], release: str, stack: str) -> None:
    name = f"{STACKS[stack]}@{release}"
    p, accel = prepared_for(release_images, name)
    spec = p.spec(name, accel)
    with tempfile.TemporaryDirectory(prefix="netinject-instance-") as tmp:
        copy = Path(tmp) / "root.img"
        subprocess.run(["cp", "--sparse=always", str(spec.image.image), str(copy)],
                       check=True)
        disk = dataclasses.replace(spec.image, image=copy)
        first = boot(dataclasses.replace(spec, image=disk, snapshot=False))
        later = boot(dataclasses.replace(spec, image=disk, snapshot=False))
    # First boot: the drive's config, installed before the stack's service started.
    assert_test_bed_network(first)
    _check_release(first, release)
    log = first.agent_log
    result = first.agent_result
    assert result is not None, log
    assert result["outcome"] == "installed", log
    assert result["files"] == str(STACK_FILES[stack]), log
    assert f"network stack: {stack}" in log, log
    assert f"first boot of instance {vm.INSTANCE_UUID}" in log, log
    times = first.unit_times()
    agent, network = times["netinject.service"], times[scenario(name).network_unit]
    assert agent[1] <= network[0], times
    assert first.first_garp_s is not None, first.console[-2000:]  # announced
    # A later boot of the same disk: the same config, decided by the launcher alone.
    assert_test_bed_network(later)
    later_result = later.agent_result
    assert later_result is not None, later.agent_log
    assert later_result["outcome"] == "unchanged", later.agent_log
    assert "not the first boot of instance" in later.agent_log, later.agent_log


@pytest.mark.releases
@pytest.mark.parametrize("release", RELEASES)
def test_a_drive_for_another_instance_is_not_trusted(
        release_images: dict[str, tuple[Prepared, str]], release: str) -> None:
    """A self-consistent drive naming another instance than the machine's SMBIOS uuid
    (a user's volume labelled config-2): the agent steps aside, DHCP brings eth0 up."""
    p, accel = prepared_for(release_images, f"inject@{release}")
    spec = p.spec(f"inject@{release}", accel)
    res = boot(dataclasses.replace(spec, dhcp_server=True, system_uuid=OTHER_UUID))
    assert res.time_to_network_s is not None, res.console[-3000:]
    _check_release(res, release)
    log = res.agent_log
    assert f"this machine's system UUID is {OTHER_UUID}: not trusting it" in log, log
    assert "stepping aside" in log, log
    v4 = _eth0_v4(res)
    assert [a["local"] for a in v4] == [vm.GUEST_IP], v4
    assert v4[0].get("dynamic") is True  # leased from dnsmasq, not injected


@pytest.mark.releases
@pytest.mark.parametrize("release", RELEASES)
def test_a_legacy_image_keeps_dhcp(
        release_images: dict[str, tuple[Prepared, str]], release: str) -> None:
    """An image without support_inject_ip: the drive carries no payload; the netplan
    image's agent steps aside and netplan's own DHCP YAML brings eth0 up (dnsmasq in the
    namespace); the stock image without the agent does the same."""
    p, accel = prepared_for(release_images, f"inject-netplan@{release}",
                            f"legacy-image@{release}")
    spec = p.spec(f"inject-netplan@{release}", accel)
    res = boot(BootSpec(spec.image, p.drives["legacy"], True, accel))
    assert res.time_to_network_s is not None, res.console[-3000:]
    _check_release(res, release)
    log = res.agent_log
    result = res.agent_result
    assert result is not None, log
    assert result["outcome"] == "no-payload", log
    assert "leaving the image's network config in place" in log, log
    assert "moved /etc/netplan/50-cloud-init.yaml aside" not in log, log
    v4 = _eth0_v4(res)
    assert [a["local"] for a in v4] == [vm.GUEST_IP], v4
    assert v4[0].get("dynamic") is True
    stock = boot(p.spec(f"legacy-image@{release}", accel))
    assert stock.time_to_network_s is not None, stock.console[-3000:]
    _check_release(stock, release)
    assert _eth0_v4(stock)[0].get("dynamic") is True
