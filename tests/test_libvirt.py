"""The libvirt paths against a real libvirtd (Debian's), a private one the tests start and
stop (netinject.vm.libvirtd: its own config, socket, state and log): the guest agent
through libvirt_qemu.qemuAgentCommand, the drive's <disk> XML, a NIC hot-plug with
attachDeviceFlags, and the test bed's own promises (bounded, diagnosable, nothing leaked).

The guest (the inject image, TCG) starts with no NIC; the hot-plugged NIC sits on a tap
in the host namespace that stays down and has no address, so no traffic leaves the guest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from netinject import drive
from netinject.hotplug import LibvirtAttacher, attach, detach, with_port
from netinject.qga import GuestAgent, LibvirtTransport
from netinject.render import Options
from netinject.sources.neutron import parse_document
from netinject.vm import testbed as vm
from netinject.vm.image import KERNEL_APPEND, build_variant
from netinject.vm.libvirtd import LibvirtdError, LibvirtdTimeout, PrivateLibvirtd
from netinject.vm.progress import Progress

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[PrivateLibvirtd]:
    """A libvirtd of this module's own (config, socket, state, log), stopped with every
    domain and process it started, whatever happens (netinject.vm.libvirtd)."""
    with PrivateLibvirtd() as lv:
        # The capability probe (TCG only) is paid here, bounded, not inside a create.
        lv.virsh("capabilities", timeout=60)
        yield lv
    # (After the with: the daemon and everything in its mount namespace are gone.)


@pytest.fixture
def domain(libvirtd: PrivateLibvirtd) -> Iterator[tuple[str, Path]]:
    image = build_variant("inject", Progress(quiet=True))
    work = Path(tempfile.mkdtemp(prefix="netinject-libvirt-"))
    try:
        for src, name in ((image.kernel, "vmlinuz"), (image.initrd, "initrd.img")):
            shutil.copyfile(src, work / name)
        subprocess.run(["cp", "--sparse=always", str(image.image), str(work / "root.img")],
                       check=True)
        cfg = work / "config.img"
        empty = parse_document({**vm.document(), "ports": []}).instance
        drive.build(empty, cfg, "vfat", Options())
        name = f"netinject-test-{uuid.uuid4().hex[:8]}"
        xml = f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{vm.INSTANCE_UUID}</uuid>
  <memory unit='MiB'>1024</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{work / 'vmlinuz'}</kernel><initrd>{work / 'initrd.img'}</initrd>
    <cmdline>{KERNEL_APPEND}</cmdline></os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='{work / 'root.img'}'/><target dev='vda' bus='virtio'/></disk>
    {drive.libvirt_disk_xml(cfg, 'vdb')}
    <serial type='file'><source path='{work / 'console.log'}'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>"""
        ET.fromstring(xml)  # well-formed, drive XML included
        (work / "domain.xml").write_text(xml)
        libvirtd.create(work / "domain.xml", name)  # destroyed by create if it fails
        try:
            yield name, work
        finally:
            libvirtd.destroy(name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_agent_and_hotplug_through_libvirt(libvirtd: PrivateLibvirtd,
                                            domain: tuple[str, Path]) -> None:
    name, work = domain
    uri = libvirtd.uri
    port, subnet, network = vm.hotplug_port()
    doc = {**vm.document(), "ports": []}
    tap = f"nitap{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
    try:
        ga = GuestAgent(LibvirtTransport(name, uri), timeout=10)
        ga.wait_ready()
        # File and exec round trips through libvirt.
        ga.write_file("/run/netinject-libvirt-test", b"via libvirt\n")
        assert ga.read_file("/run/netinject-libvirt-test") == b"via libvirt\n"
        assert ga.exec("/bin/cat", ["/run/netinject-libvirt-test"]).stdout == b"via libvirt\n"
        # The read-only config drive is there as a virtio disk, label config-2.
        blk = ga.exec("/usr/sbin/blkid", ["-o", "export", "/dev/vdb"])
        assert b"LABEL=config-2" in blk.stdout

        res = attach(doc, port, ga, LibvirtAttacher(name, uri), tap, [subnet], [network],
                     timeout=60)
        assert res.seconds_to_address is not None, (work / "console.log").read_text()[-2000:]
        assert res.nic.name == "eth0"
        ifaces = {i["name"]: i for i in ga.network_interfaces()}
        assert vm.HOTPLUG_IP in {a["ip-address"] for a in ifaces["eth0"]["ip-addresses"]}
        assert json.loads(res.system_metadata["ports_pattern"]) == {vm.HOTPLUG_PORT_ID: "0"}

        detach(with_port(doc, port, [subnet], [network]), vm.HOTPLUG_PORT_ID, ga,
               LibvirtAttacher(name, uri))
        deadline = time.monotonic() + 60
        while "eth0" in {i["name"] for i in ga.network_interfaces()}:
            assert time.monotonic() < deadline, "eth0 still present after detach"
            time.sleep(0.5)
        assert "eth0" not in ga.read_file("/etc/network/interfaces").decode()
        ga.close()
    finally:
        subprocess.run(["ip", "link", "del", tap], check=False)


def _kernel_only(work: Path, name: str, kernel: Path) -> Path:
    """A 256 MiB domain that boots only a kernel (no disks): enough to start QEMU."""
    xml = work / f"{name}.xml"
    xml.write_text(f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel>
    <cmdline>console=ttyS0 panic=-1</cmdline></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>""")
    return xml


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (not yet reaped by its parent) is gone too.
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


def test_a_create_that_times_out_leaves_no_domain_and_no_daemon(tmp_path: Path) -> None:
    """The report's failure: virsh create outlived its deadline and the domain was created
    after virsh had been killed, then ran for the rest of the CI run. Now a create that
    times out stops the daemon with every process it started (QEMU included), and the
    error carries libvirtd's log."""
    kernel = build_variant("inject", Progress(quiet=True)).kernel
    xml = _kernel_only(tmp_path, "netinject-test-timeout", kernel)
    with PrivateLibvirtd() as lv:
        assert lv.proc is not None
        daemon = lv.proc.pid
        with pytest.raises(LibvirtdTimeout) as err:
            lv.create(xml, "netinject-test-timeout", timeout=0.001)
        assert "no answer within 0.001 s" in str(err.value)
        assert "libvirtd's log" in str(err.value)
        assert lv.leftovers() == []
        assert _gone(daemon)
        assert not lv.dir.exists()


def test_a_failing_create_destroys_and_explains(tmp_path: Path) -> None:
    """A domain libvirt refuses (its kernel does not exist) leaves no domain behind, and
    the error says why in libvirt's own words; the daemon goes on serving."""
    missing = tmp_path / "no-such-vmlinuz"
    xml = _kernel_only(tmp_path, "netinject-test-refused", missing)
    with PrivateLibvirtd() as lv:
        with pytest.raises(LibvirtdError) as err:
            lv.create(xml, "netinject-test-refused")
        assert not isinstance(err.value, LibvirtdTimeout)
        assert str(missing) in str(err.value)
        assert lv.virsh("list", "--all", "--name").stdout.split() == []
        # Still serving: a good domain starts, and stopping ends its QEMU too.
        kernel = build_variant("inject", Progress(quiet=True)).kernel
        lv.create(_kernel_only(tmp_path, "netinject-test-ok", kernel), "netinject-test-ok")
        assert lv.virsh("list", "--name").stdout.split() == ["netinject-test-ok"]
        qemu = [p for p in lv.leftovers()
                if b"qemu-system" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(qemu) == 1
    assert _gone(qemu[0])


def test_a_daemon_that_does_not_answer_is_stopped_with_its_log() -> None:
    lv = PrivateLibvirtd(start_timeout=0.0)
    with pytest.raises(LibvirtdTimeout, match=r"did not answer on .* within 0 s") as err, lv:
        pass
    assert "libvirtd's log" in str(err.value)
    assert lv.leftovers() == []
    assert not lv.dir.exists()
