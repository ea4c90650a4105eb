"""NIC hot-plug: the new NIC's config and udev rule go into the running guest through
qemu-guest-agent *before* the NIC is attached, so udev names it and ifupdown
(``allow-hotplug``) configures it statically the moment it appears.

Order: allocate the index (ports_pattern, lowest free) -> re-render the guest's files for
all NICs -> write them atomically through the agent (temporary file, then rename in the
guest; originals restored if any step fails) -> attach the NIC (QMP ``netdev_add`` +
``device_add`` via qemu.qmp, or libvirt) -> wait until the agent reports ``ethN`` with
its address. If the agent is unreachable or a write fails, the NIC is not attached
(unless DHCP fallback is allowed) and the guest's files are as they were.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol

from .errors import NetinjectError
from .model import Instance, Nic
from .qga import GuestAgent, QgaError
from .render import Options, render_all
from .sources.neutron import LoadedInstance, parse_document

HOTPLUG_FORMATS = ("eni", "udev", "resolv")


class HotplugError(NetinjectError):
    """The hot-plug could not be done; the guest was left as it was."""


# -- writing files into the guest ---------------------------------------------------------


def write_files_atomic(ga: GuestAgent, files: Mapping[str, bytes], mode: str = "0644",
                       between_chunks: Callable[[int], None] | None = None) -> None:
    """Write every file into the guest all-or-nothing: each goes to a temporary name
    beside its target and is renamed over it only when all are written; if a rename
    fails, the files already replaced get their originals back."""
    # Temporary files a killed agent may have left from an interrupted earlier write.
    _remove_quietly(ga, [_tmp_name(p) for p in files])
    originals: dict[str, bytes | None] = {}
    for path in files:
        try:
            originals[path] = ga.read_file(path)
        except QgaError as exc:
            if "No such file" not in str(exc):
                raise
            originals[path] = None
    staged: list[tuple[str, str]] = []
    try:
        for path, data in files.items():
            tmp = _tmp_name(path)
            staged.append((tmp, path))
            ga.write_file(tmp, data, between_chunks)
            ga.check("/bin/chmod", [mode, tmp])
    except QgaError:
        _remove_quietly(ga, [t for t, _ in staged])
        raise
    done: list[str] = []
    try:
        for tmp, path in staged:
            ga.check("/bin/mv", ["-fT", tmp, path])
            done.append(path)
    except QgaError:
        _remove_quietly(ga, [t for t, p in staged if p not in done])
        for path in reversed(done):
            original = originals[path]
            if original is None:
                _remove_quietly(ga, [path])
            else:
                d, name = path.rsplit("/", 1)
                tmp = f"{d}/.{name}.netinject-restore"
                ga.write_file(tmp, original)
                ga.check("/bin/mv", ["-fT", tmp, path])
        raise


def _tmp_name(path: str) -> str:
    d, name = path.rsplit("/", 1)
    return f"{d}/.{name}.netinject-tmp"


def _remove_quietly(ga: GuestAgent, paths: list[str]) -> None:
    for p in paths:
        try:
            ga.exec("/bin/rm", ["-f", p])
        except QgaError:
            return  # the agent is gone: nothing more can be cleaned from here


# -- attaching NICs -----------------------------------------------------------------------


class NicAttacher(Protocol):
    def attach(self, nic: Nic, tap: str) -> None: ...

    def detach(self, nic: Nic) -> None: ...


class QmpAttacher:
    """QEMU's QMP socket (qemu.qmp): netdev_add a tap backend, device_add virtio-net."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.path = socket_path
        self.timeout = timeout

    async def _run(self, commands: list[tuple[str, dict[str, Any]]],
                   wait_event: str | None = None) -> None:
        from qemu.qmp import QMPClient

        qmp = QMPClient("netinject")
        await asyncio.wait_for(qmp.connect(self.path), self.timeout)
        try:
            for cmd, args in commands[:1] if wait_event else commands:
                await asyncio.wait_for(qmp.execute(cmd, args), self.timeout)
            if wait_event:
                async def _wait() -> None:
                    while (await qmp.events.get())["event"] != wait_event:
                        pass
                await asyncio.wait_for(_wait(), self.timeout)
                for cmd, args in commands[1:]:
                    await asyncio.wait_for(qmp.execute(cmd, args), self.timeout)
        finally:
            await qmp.disconnect()

    def attach(self, nic: Nic, tap: str) -> None:
        try:
            asyncio.run(self._run([
                ("netdev_add", {"type": "tap", "id": f"ni-net{nic.index}", "ifname": tap,
                                "script": "no", "downscript": "no"}),
                ("device_add", {"driver": "virtio-net-pci", "id": f"ni-nic{nic.index}",
                                "netdev": f"ni-net{nic.index}", "mac": str(nic.mac)}),
            ]))
        except Exception as exc:
            raise HotplugError(f"QMP attach of {nic.name} failed: {exc}") from None

    def detach(self, nic: Nic) -> None:
        try:
            asyncio.run(self._run([
                ("device_del", {"id": f"ni-nic{nic.index}"}),
                ("netdev_del", {"id": f"ni-net{nic.index}"}),
            ], wait_event="DEVICE_DELETED"))
        except Exception as exc:
            raise HotplugError(f"QMP detach of {nic.name} failed: {exc}") from None


class LibvirtAttacher:
    """libvirt ``attachDeviceFlags`` with an ethernet interface on an existing tap."""

    def __init__(self, domain: str, uri: str = "qemu:///system") -> None:
        try:
            import libvirt  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise HotplugError("libvirt-python is not installed") from None
        self._libvirt = libvirt
        # Errors become exceptions here; libvirt's default handler also prints them.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self.dom = libvirt.open(uri).lookupByName(domain)

    @staticmethod
    def interface_xml(nic: Nic, tap: str) -> str:
        return (f"<interface type='ethernet'><mac address='{nic.mac}'/>"
                f"<target dev='{tap}' managed='no'/><model type='virtio'/></interface>")

    def attach(self, nic: Nic, tap: str) -> None:
        try:
            self.dom.attachDeviceFlags(self.interface_xml(nic, tap),
                                       self._libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except self._libvirt.libvirtError as exc:
            raise HotplugError(f"libvirt attach of {nic.name} failed: {exc}") from None

    def detach(self, nic: Nic) -> None:
        xml = f"<interface type='ethernet'><mac address='{nic.mac}'/></interface>"
        try:
            self.dom.detachDeviceFlags(xml, self._libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except self._libvirt.libvirtError as exc:
            raise HotplugError(f"libvirt detach of {nic.name} failed: {exc}") from None


# -- the flows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HotplugResult:
    nic: Nic
    system_metadata: dict[str, str]
    seconds_to_address: float | None  # from the request (config writes included)
    configured: bool  # False when the DHCP fallback was taken
    attached_at: float | None = None  # time.monotonic() when the NIC was attached


def with_port(doc: Mapping[str, Any], port: Mapping[str, Any],
              subnets: list[Mapping[str, Any]], networks: list[Mapping[str, Any]]
              ) -> dict[str, Any]:
    """The instance document with one more port (and its subnet/network if new)."""
    out = copy.deepcopy(dict(doc))
    out["ports"] = [*out.get("ports", []), dict(port)]
    for key, extra in (("subnets", subnets), ("networks", networks)):
        known = {x.get("id") for x in out.get(key, [])}
        out[key] = [*out.get(key, []), *(dict(x) for x in extra if x.get("id") not in known)]
    return out


def without_port(doc: Mapping[str, Any], port_id: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(doc))
    ports = out.get("ports", [])
    out["ports"] = [p for p in ports if p.get("id") != port_id]
    if len(out["ports"]) == len(ports):
        raise HotplugError(f"port {port_id!r} is not one of the instance's ports")
    return out


def guest_files(instance: Instance, options: Options | None = None) -> dict[str, bytes]:
    rendered = render_all(instance, HOTPLUG_FORMATS, options or Options())
    return {"/" + str(PurePosixPath(p)): c.encode() for p, c in rendered.items()}


def wait_for_address(ga: GuestAgent, nic: Nic, timeout: float) -> bool:
    want = {str(a.interface.ip) for a in nic.addresses if a.interface is not None}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for iface in ga.network_interfaces():
                if iface.get("name") != nic.name:
                    continue
                have = {a.get("ip-address") for a in iface.get("ip-addresses", [])}
                if not want or want <= have:
                    return True
        except QgaError:
            pass
        time.sleep(0.1)
    return False


def attach(doc: Mapping[str, Any], port: Mapping[str, Any], ga: GuestAgent,
           attacher: NicAttacher, tap: str | None, subnets: list[Mapping[str, Any]] | None = None,
           networks: list[Mapping[str, Any]] | None = None, allow_dhcp_fallback: bool = False,
           timeout: float = 60.0, options: Options | None = None) -> HotplugResult:
    t0 = time.monotonic()
    loaded: LoadedInstance = parse_document(with_port(doc, port, subnets or [],
                                                      networks or []))
    port_id = str(port.get("id"))
    nic = next(n for n in loaded.instance.nics if n.port_id == port_id)
    configured = True
    try:
        ga.ping()
        write_files_atomic(ga, guest_files(loaded.instance, options))
    except QgaError as exc:
        if not allow_dhcp_fallback:
            raise HotplugError(f"guest agent: {exc}; {nic.name} was not attached and the "
                               "guest's files are unchanged") from None
        configured = False
    attached_at = time.monotonic()
    attacher.attach(nic, tap or f"tap{nic.index}")  # default: the host tap for ethN
    ok = configured and wait_for_address(ga, nic, timeout)
    return HotplugResult(nic, dict(loaded.system_metadata),
                         time.monotonic() - t0 if ok else None, configured, attached_at)


def detach(doc: Mapping[str, Any], port_id: str, ga: GuestAgent, attacher: NicAttacher,
           options: Options | None = None) -> HotplugResult:
    before = parse_document(doc)
    nic = next((n for n in before.instance.nics if n.port_id == port_id), None)
    if nic is None:
        raise HotplugError(f"port {port_id!r} is not one of the instance's ports")
    after = parse_document(without_port(doc, port_id))
    attacher.detach(nic)
    write_files_atomic(ga, guest_files(after.instance, options))
    # Parsing the document without the port already dropped it from ports_pattern.
    return HotplugResult(nic, dict(after.system_metadata), None, True)
