"""The libvirt paths against a real libvirtd (Debian libvirt-daemon-system), started by
the test if it is not running: the guest agent through libvirt_qemu.qemuAgentCommand, the
drive's <disk> XML, and a NIC hot-plug with attachDeviceFlags.

The guest (the inject image, TCG) starts with no NIC; the hot-plugged NIC sits on a tap
in the host namespace that stays down and has no address, so no traffic leaves the guest.
"""

from __future__ import annotations

import json
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
from netinject.vm.progress import Progress

pytestmark = [pytest.mark.e2e, pytest.mark.root]
URI = "qemu:///system"


def _virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True,
                          check=False, timeout=60)


@pytest.fixture(scope="module")
def libvirtd() -> None:
    if _virsh("version").returncode == 0:
        return
    for daemon in ("/usr/sbin/virtlogd", "/usr/sbin/libvirtd"):
        subprocess.run([daemon, "-d"], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while _virsh("version").returncode != 0:
        assert time.monotonic() < deadline, "libvirtd did not come up"
        time.sleep(0.5)


@pytest.fixture
def domain(libvirtd: None) -> Iterator[tuple[str, Path]]:
    image = build_variant("inject", Progress(quiet=True))
    work = Path(tempfile.mkdtemp(prefix="netinject-libvirt-"))
    work.chmod(0o755)  # libvirt runs QEMU as its own user
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
        done = _virsh("create", str(work / "domain.xml"))
        assert done.returncode == 0, done.stderr
        try:
            yield name, work
        finally:
            _virsh("destroy", name)
    finally:
        shutil.rmtree(work, ignore_errors=True)



def test_agent_and_hotplug_through_libvirt(domain: tuple[str, Path]) -> None:
    name, work = domain
    port, subnet, network = vm.hotplug_port()
    doc = {**vm.document(), "ports": []}
    tap = f"nitap{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
    try:
        ga = GuestAgent(LibvirtTransport(name, URI), timeout=10)
        ga.wait_ready()
        # File and exec round trips through libvirt.
        ga.write_file("/run/netinject-libvirt-test", b"via libvirt\n")
        assert ga.read_file("/run/netinject-libvirt-test") == b"via libvirt\n"
        assert ga.exec("/bin/cat", ["/run/netinject-libvirt-test"]).stdout == b"via libvirt\n"
        # The read-only config drive is there as a virtio disk, label config-2.
        blk = ga.exec("/usr/sbin/blkid", ["-o", "export", "/dev/vdb"])
        assert b"LABEL=config-2" in blk.stdout

        res = attach(doc, port, ga, LibvirtAttacher(name, URI), tap, [subnet], [network],
                     timeout=60)
        assert res.seconds_to_address is not None, (work / "console.log").read_text()[-2000:]
        assert res.nic.name == "eth0"
        ifaces = {i["name"]: i for i in ga.network_interfaces()}
        assert vm.HOTPLUG_IP in {a["ip-address"] for a in ifaces["eth0"]["ip-addresses"]}
        assert json.loads(res.system_metadata["ports_pattern"]) == {vm.HOTPLUG_PORT_ID: "0"}

        detach(with_port(doc, port, [subnet], [network]), vm.HOTPLUG_PORT_ID, ga,
               LibvirtAttacher(name, URI))
        deadline = time.monotonic() + 60
        while "eth0" in {i["name"] for i in ga.network_interfaces()}:
            assert time.monotonic() < deadline, "eth0 still present after detach"
            time.sleep(0.5)
        assert "eth0" not in ga.read_file("/etc/network/interfaces").decode()
        ga.close()
    finally:
        subprocess.run(["ip", "link", "del", tap], check=False)
