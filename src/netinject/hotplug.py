"""NIC hot-plug: the new NIC's config and udev rule go into the running guest through
qemu-guest-agent *before* the NIC is attached, so udev names it and ifupdown
(``allow-hotplug``) configures it statically the moment it appears.

Order: allocate the index (ports_pattern, lowest free) -> re-render the guest's files for
all NICs -> hand them to ``netinject-guest apply`` in the guest in one guest-exec (the
agent installs them as one transaction: same allowlist, backups and rollback as a first
boot) -> attach the NIC (QMP ``netdev_add`` + ``device_add`` via qemu.qmp, or libvirt)
-> wait until the agent reports ``ethN`` with its address. If the reply is lost, the
guest is asked what became of the transaction (``apply-status`` fences it off if it never
ran) and the files are read back, so the error says truthfully whether they changed. The
NIC is attached only when they all did (unless DHCP fallback is allowed).
"""

from __future__ import annotations

import asyncio
import copy
import enum
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Protocol

from .errors import NetinjectError
from .guest import contract
from .guest.stacks import STACK_CONFIG, Stack, read_stack, stack_named, stack_of
from .model import Instance, Nic
from .qga import ExecResult, GuestAgent, QgaError, QgaTimeout, QgaUnavailable
from .render import STACK_RENDERERS, Files, Options, render_all
from .sources.neutron import LoadedInstance, parse_document

HOTPLUG_FORMATS = (*STACK_RENDERERS, "udev", "resolv")
"""What a live change writes: every stack's network files (the agent installs its image's,
as from a drive), the NIC names and the resolver; not the hostname, which a running guest
may have been given since."""


class HotplugError(NetinjectError):
    """The hot-plug could not be done. ``result``: what the guest's files are now (its
    outcome says truthfully which: all as before, or not). Every error raised once the
    guest was asked to change anything carries one; an error without one came before
    that (bad input, a missing library, a NIC that could not be detached), so nothing
    in the guest changed."""

    def __init__(self, message: str, result: ApplyResult | None = None) -> None:
        super().__init__(message)
        self.result = result

    @property
    def outcome(self) -> ApplyOutcome:
        return self.result.outcome if self.result is not None else ApplyOutcome.UNCHANGED


# -- writing files into the guest ---------------------------------------------------------

GUEST_AGENT = "/usr/sbin/netinject-guest"
LIVE_AGENT = (0, 2, 0)
"""The oldest agent that takes live changes: manifest format 3, the applied manifest,
activation through the image's stack (contract.VERSION 0.2.0)."""


@dataclass(frozen=True)
class GuestSide:
    """How the guest's netinject-guest is run (its path, and for tests a root tree), and
    how long the host waits for it.

    ``apply_timeout``: an apply may wait 10 s for the agent's lock (a boot-time install
    or another live change), then bring NICs up and wait for their running state, and as
    long again to undo a failure: the host waits that long before it takes the reply as
    lost. ``recovery_timeout``: how long to keep asking what became of an apply whose
    reply was lost (the agent answers "busy" while it still runs). ``status_timeout``:
    one apply-status call (it takes the same lock). ``lock_wait``: how long the agent
    waits for its lock (``--lock-wait``; None: the agent's default, 10 s)."""

    command: tuple[str, ...] = (GUEST_AGENT,)
    root: str = "/"
    sysfs: str | None = None
    apply_timeout: float = 180.0
    recovery_timeout: float = 180.0
    status_timeout: float = 20.0
    lock_wait: float | None = None

    def argv(self, action: str, txid: str) -> list[str]:
        extra = ["--root", self.root] + (["--sysfs", self.sysfs] if self.sysfs else [])
        if self.lock_wait is not None:  # (else the agent's own 10 s: any 0.2 agent)
            extra += ["--lock-wait", repr(self.lock_wait)]
        return [*self.command[1:], action, "--txid", txid, *extra]

    def path(self, guest_path: PurePosixPath) -> str:
        return str(PurePosixPath(self.root) / guest_path)


class ApplyOutcome(enum.Enum):
    """What the guest's files are after an apply, as the host established it: the
    guest's own answer (contract.Outcome) when it came, else read back."""

    APPLIED = "applied"  # all new
    UNCHANGED = "unchanged"  # all as before (refused, rolled back, or fenced off)
    MIXED = "mixed"  # some new, some not: a rollback failed (the guest says broken)
    UNKNOWN = "unknown"  # the guest could not be asked


# The guest's outcomes (contract.Outcome) that leave every file as it was.
_AS_BEFORE = (contract.Outcome.UNCHANGED, contract.Outcome.ROLLED_BACK,
              contract.Outcome.FENCED, contract.Outcome.BUSY)


@dataclass(frozen=True)
class ApplyResult:
    outcome: ApplyOutcome
    detail: str
    guest: str | None = None  # the guest's own outcome (contract.Outcome), when it said
    said: Mapping[str, str] = field(default_factory=dict)  # its result line's fields


def bundle_for(instance: Instance, options: Options, rendered: Files | None = None
               ) -> tuple[bytes, dict[str, bytes]]:
    """The bundle ``netinject-guest apply`` reads (manifest + payload, as on the drive:
    every stack's files; the agent installs its image's), and the files by guest path.
    ``rendered``: these files instead of the instance's (a test's hand-made config)."""
    from . import drive

    if rendered is None:
        rendered = render_all(instance, HOTPLUG_FORMATS, options)
    manifest = drive.manifest(instance, rendered, options.style.value).encode()
    names = drive.source_names(rendered)
    files = [("manifest", manifest), *((names[p], rendered[p].encode())
                                       for p in sorted(rendered))]
    return contract.bundle(files), {str(p): c.encode() for p, c in rendered.items()}


def _read_or_none(ga: GuestAgent, path: str) -> bytes | None:
    """The file's bytes, or None when the agent answers that it cannot be read (absent,
    a directory, ...). A transport failure (timeout, no agent) is raised."""
    try:
        return ga.read_file(path)
    except (QgaTimeout, QgaUnavailable):
        raise
    except QgaError:
        return None


def read_files(ga: GuestAgent, side: GuestSide, paths: Iterable[str]
                ) -> dict[str, bytes | None]:
    """What the guest has at each guest path now (None: nothing readable there)."""
    return {p: _read_or_none(ga, side.path(PurePosixPath(p))) for p in paths}


def is_symlink(ga: GuestAgent, side: GuestSide, guest_path: str) -> bool | None:
    """Whether the guest path is a symlink (qemu-guest-agent's file calls follow links:
    the guest's ``test -h`` says); None when no ``test`` program could be run."""
    for program in ("/usr/bin/test", "/bin/test"):
        try:
            res = ga.exec(program, ["-h", side.path(PurePosixPath(guest_path))])
        except (QgaTimeout, QgaUnavailable):
            raise
        except QgaError:
            continue
        if res.exitcode in (0, 1):
            return res.exitcode == 0
    return None


def guest_stack(ga: GuestAgent, side: GuestSide) -> Stack:
    """The network stack the guest's agent installs files for (what ``netinject-guest
    install`` recorded; ifupdown without a record, as the agent reads it)."""
    raw = _read_or_none(ga, side.path(PurePosixPath(STACK_CONFIG)))
    if raw is None:
        return read_stack("/nonexistent")  # (the agent's own default)
    try:
        return stack_named(raw.decode("ascii", "replace").strip())
    except contract.AgentError as exc:
        raise HotplugError(f"the guest's /{STACK_CONFIG}: {exc}",
                           ApplyResult(ApplyOutcome.UNCHANGED, str(exc))) from None


def parse_version(text: str) -> tuple[int, ...] | None:
    """``netinject-guest 0.2.0`` (what ``--version`` prints) -> (0, 2, 0); None when the
    text is not that."""
    words = text.split()
    if len(words) != 2 or words[0] != "netinject-guest":
        return None
    parts = words[1].split(".")
    if not all(p.isascii() and p.isdigit() for p in parts) or len(parts) < 2:
        return None
    return tuple(int(p) for p in parts)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def agent_version(ga: GuestAgent, side: GuestSide) -> str:
    """The guest's netinject agent version (``netinject-guest --version`` through
    guest-exec), when it can take live changes (LIVE_AGENT or newer). HotplugError
    (nothing in the guest changed) when there is no agent or it is older; a transport
    failure (QgaTimeout, QgaUnavailable) is raised as it is."""
    need = _dotted(LIVE_AGENT)
    try:
        res = ga.exec(side.command[0], [*side.command[1:], "--version"])
    except (QgaTimeout, QgaUnavailable):
        raise
    except QgaError as exc:
        msg = (f"could not run {side.command[0]} in the guest (is the netinject agent "
               f"installed in the image? live changes need agent {need} or newer): {exc}")
        raise HotplugError(msg, ApplyResult(ApplyOutcome.UNCHANGED, msg)) from None
    text = res.stdout.decode(errors="replace").strip()
    found = parse_version(text) if res.exitcode == 0 else None
    if found is None:
        said = (text or res.stderr.decode(errors="replace").strip()
                or f"exit {res.exitcode}")[:200]
        msg = (f"the guest's {side.command[0]} does not say its version ({said!r}): not "
               f"netinject's agent, or one older than {need}; live changes need agent "
               f"{need} or newer (this netinject ships {contract.VERSION})")
        raise HotplugError(msg, ApplyResult(ApplyOutcome.UNCHANGED, msg))
    if found < LIVE_AGENT:
        msg = (f"the guest's netinject agent is {_dotted(found)}; live changes need "
               f"{need} or newer (this netinject ships {contract.VERSION}): update the "
               "agent in the image")
        raise HotplugError(msg, ApplyResult(ApplyOutcome.UNCHANGED, msg))
    return _dotted(found)


def apply_in_guest(ga: GuestAgent, instance: Instance, options: Options,
                   side: GuestSide, rendered: Files | None = None,
                   check_agent: bool = True) -> ApplyResult:
    """Install the instance's files in the running guest as one transaction.

    Returns what the guest's files are now, established from the guest itself: its
    typed answer (contract.Outcome, in its result line), or after a lost reply its
    apply-status and the files read back: APPLIED (all new), UNCHANGED (all as before),
    MIXED or UNKNOWN (the agent could not be asked). A QgaError before the transaction
    was sent means UNCHANGED by construction. ``check_agent``: first make sure the
    guest's agent can take live changes (agent_version; HotplugError, UNCHANGED, when
    it cannot); False when the caller just did.
    """
    if check_agent:
        agent_version(ga, side)
    raw, by_path = bundle_for(instance, options, rendered)
    stack = guest_stack(ga, side)
    files = {p: c for p, c in by_path.items() if stack_of(p) in (None, stack)}
    txid = secrets.token_hex(8)
    # The originals, to tell "unchanged" from "applied" should the reply be lost.
    originals = read_files(ga, side, files)
    try:
        pid = ga.spawn(side.command[0], side.argv("apply", txid), input_data=raw)
    except (QgaTimeout, QgaUnavailable) as exc:  # sent, maybe started: ask
        return _recover(ga, side, txid, files, originals, f"reply lost ({exc})")
    except QgaError as exc:  # the agent refused to start it: nothing ran
        return ApplyResult(ApplyOutcome.UNCHANGED,
                           f"could not run {side.command[0]} in the guest (is the netinject "
                           f"agent installed in the image?): {exc}")
    try:
        res = ga.wait(pid, side.command[0], side.apply_timeout)
    except QgaError as exc:
        return _recover(ga, side, txid, files, originals, f"reply lost ({exc})")
    said = contract.parse_result(res.stdout.decode(errors="replace"))
    why = _words(said, res)
    if said is None:  # an agent without result lines: its exit status says
        if res.exitcode in (contract.APPLY_OK, contract.APPLY_UNCHANGED):
            return ApplyResult(ApplyOutcome.APPLIED if res.exitcode == contract.APPLY_OK
                               else ApplyOutcome.UNCHANGED, why)
        return _readback(ga, side, files, originals, why)
    return _from_guest(ga, side, files, originals, said, why)


def _words(said: dict[str, str] | None, res: ExecResult) -> str:
    if said is not None:
        return f"{said['outcome']}: {said.get('message', '')}".rstrip(": ")
    return (res.stdout.decode(errors="replace").strip()
            or res.stderr.decode(errors="replace").strip() or f"exit {res.exitcode}")


def _from_guest(ga: GuestAgent, side: GuestSide, files: Mapping[str, bytes],
                originals: Mapping[str, bytes | None], said: dict[str, str], why: str
                ) -> ApplyResult:
    """The result of the guest's typed answer: applied and the as-before outcomes are
    taken at their word; broken (a rollback failed) is read back."""
    outcome = said["outcome"]
    if outcome == contract.Outcome.APPLIED:
        return ApplyResult(ApplyOutcome.APPLIED, why, outcome, said)
    if outcome in _AS_BEFORE:
        return ApplyResult(ApplyOutcome.UNCHANGED, why, outcome, said)
    back = _readback(ga, side, files, originals, why)
    return ApplyResult(back.outcome, back.detail, outcome, said)


def _recover(ga: GuestAgent, side: GuestSide, txid: str, files: Mapping[str, bytes],
             originals: Mapping[str, bytes | None], why: str) -> ApplyResult:
    """After a lost reply: ask the guest what became of ``txid`` (fencing it off if it
    never ran), then read the files back (leaving out what it says it kept)."""
    deadline = time.monotonic() + side.recovery_timeout
    last = why
    while time.monotonic() < deadline:
        try:
            ga.ping()
            res = ga.exec(side.command[0], side.argv("apply-status", txid),
                          timeout=side.status_timeout)
        except (QgaTimeout, QgaUnavailable) as exc:
            last = str(exc)
            time.sleep(0.2)
            continue
        except QgaError as exc:  # an answer, not a lost one: asking again will not help
            last = str(exc)
            break
        said = contract.parse_result(res.stdout.decode(errors="replace"))
        if said is not None and said["outcome"] == contract.Outcome.BUSY:
            last = _words(said, res)  # the apply itself may still be running: ask again
            time.sleep(0.5)
            continue
        if said is None or said["outcome"] == contract.Outcome.BROKEN:
            last = _words(said, res)
            break
        kept = kept_paths(said)
        back = _readback(ga, side, files, originals,
                         f"{why}; the guest says: {_words(said, res)}", kept)
        return ApplyResult(back.outcome, back.detail, said["outcome"], said)
    return ApplyResult(ApplyOutcome.UNKNOWN,
                       f"{why}; the guest could not be asked afterwards ({last})")


def kept_paths(said: Mapping[str, str]) -> set[str]:
    """The guest paths an applied transaction says it kept as they were (``kept=``);
    only paths the agent may keep (contract.KEEP_SYMLINKS) count, so an answer cannot
    make the host skip a file the agent always replaces."""
    if said.get("outcome") != contract.Outcome.APPLIED:
        return set()
    return set(said.get("kept", "").split(",")) & set(contract.KEEP_SYMLINKS)


def _readback(ga: GuestAgent, side: GuestSide, files: Mapping[str, bytes],
              originals: Mapping[str, bytes | None], why: str,
              kept: set[str] | None = None) -> ApplyResult:
    """What the guest's files are now, read back. ``kept``: paths the guest's applied
    transaction left as they were by design (a symlink the image manages): what 'new'
    means there is the image's business, so they are not compared."""
    try:
        now = read_files(ga, side, files)
    except QgaError as exc:
        return ApplyResult(ApplyOutcome.UNKNOWN, f"{why}; reading the files back failed "
                                                 f"({exc})")
    compared = [p for p in files if p not in (kept or ())]
    new = [p for p in compared if now[p] == files[p]]
    old = [p for p in compared if now[p] == originals[p]]
    if len(new) == len(compared):
        return ApplyResult(ApplyOutcome.APPLIED, why)
    if len(old) == len(compared):
        return ApplyResult(ApplyOutcome.UNCHANGED, why)
    return ApplyResult(ApplyOutcome.MIXED, f"{why}; new: {', '.join(new) or 'none'}; "
                                           f"as before: {', '.join(old) or 'none'}")


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
        try:
            self.dom = libvirt.open(uri).lookupByName(domain)
        except libvirt.libvirtError as exc:
            raise HotplugError(f"libvirt {uri}: {exc}") from None

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
    applied: ApplyResult | None = None  # what became of the guest's files


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


def configure(ga: GuestAgent, instance: Instance, options: Options,
              side: GuestSide) -> ApplyResult:
    """apply_in_guest, with any agent error before the transaction was sent (the files
    cannot have changed) as UNCHANGED, and a refusal before it (no agent, one too old,
    an unknown stack) as its result."""
    try:
        ga.ping()
        return apply_in_guest(ga, instance, options, side)
    except QgaError as exc:
        return ApplyResult(ApplyOutcome.UNCHANGED, f"guest agent: {exc}")
    except HotplugError as exc:  # refused before the transaction (no agent, too old)
        if exc.result is None:
            raise
        return exc.result


def describe(result: ApplyResult) -> str:
    """What the guest's files are now, in words a user can act on."""
    return {
        ApplyOutcome.APPLIED: "the guest's files were updated",
        ApplyOutcome.UNCHANGED: "the guest's files are unchanged",
        ApplyOutcome.MIXED: "the guest's files are PARTLY updated (check them)",
        ApplyOutcome.UNKNOWN: "whether the guest's files changed is UNKNOWN (check them)",
    }[result.outcome] + f" ({result.detail})"


def attach(doc: Mapping[str, Any], port: Mapping[str, Any], ga: GuestAgent,
           attacher: NicAttacher, tap: str | None, subnets: list[Mapping[str, Any]] | None = None,
           networks: list[Mapping[str, Any]] | None = None, allow_dhcp_fallback: bool = False,
           timeout: float = 60.0, options: Options | None = None,
           side: GuestSide | None = None, wait: bool = True) -> HotplugResult:
    """Configure the guest for the new NIC as one transaction, then attach the NIC.

    Nothing is attached unless the guest's files are all new, except with
    ``allow_dhcp_fallback``: then the NIC is attached whatever happened, and the result
    says so (``configured`` False, ``applied`` the truth about the files). If attaching
    fails after the guest took the new config, the old config is applied again
    (attach_documents).
    """
    after = with_port(doc, port, subnets or [], networks or [])
    return attach_documents(doc, after, str(port.get("id")), ga, attacher, tap,
                            allow_dhcp_fallback, timeout, options, side, wait)


def attach_documents(before: Mapping[str, Any], after: Mapping[str, Any], port_id: str,
                     ga: GuestAgent, attacher: NicAttacher, tap: str | None,
                     allow_dhcp_fallback: bool = False, timeout: float = 60.0,
                     options: Options | None = None, side: GuestSide | None = None,
                     wait: bool = True) -> HotplugResult:
    """attach, given the instance document without the port (what the guest has) and
    with it. ``wait``: wait (at most ``timeout`` s) for the agent to report the NIC's
    address.

    When the NIC cannot be attached after the guest took the new config, ``before`` is
    applied again, so the guest ends with all old files; the HotplugError's result says
    truthfully what they are (UNCHANGED: undone; APPLIED: undoing failed, the files are
    new; MIXED or UNKNOWN).
    """
    t0 = time.monotonic()
    options = options or Options()
    side = side or GuestSide()
    loaded: LoadedInstance = parse_document(after)
    nic = next((n for n in loaded.instance.nics if n.port_id == port_id), None)
    if nic is None:
        raise HotplugError(f"port {port_id!r} is not one of the instance's ports")
    old = parse_document(before).instance  # (checked before the guest is touched)
    applied = configure(ga, loaded.instance, options, side)
    configured = applied.outcome is ApplyOutcome.APPLIED
    if not configured and not allow_dhcp_fallback:
        raise HotplugError(f"{nic.name} was not attached: {describe(applied)}", applied)
    attached_at = time.monotonic()
    try:
        attacher.attach(nic, tap or f"tap{nic.index}")  # default: the host tap for ethN
    except HotplugError as exc:
        if not configured:
            raise HotplugError(f"{exc}; {describe(applied)}", applied) from None
        raise _undone(ga, old, nic, exc, options, side) from None
    ok = configured and wait and wait_for_address(ga, nic, timeout)
    return HotplugResult(nic, dict(loaded.system_metadata),
                         time.monotonic() - t0 if ok else None, configured, attached_at,
                         applied)


def _undone(ga: GuestAgent, old: Instance, nic: Nic, failure: HotplugError,
            options: Options, side: GuestSide) -> HotplugError:
    """The NIC could not be attached after the guest took its config: apply the old
    config again, and the error that says truthfully what the guest's files are now
    (relative to before the attach: UNCHANGED all old again, APPLIED still all new)."""
    undo = configure(ga, old, options, side)
    if undo.outcome is ApplyOutcome.APPLIED:
        result = ApplyResult(ApplyOutcome.UNCHANGED,
                             f"{nic.name}'s config was installed, then undone ({undo.detail})",
                             undo.guest, undo.said)
        return HotplugError(f"{failure}; the guest's files are as before ({nic.name}'s "
                            "config was installed, then undone)", result)
    now = ApplyOutcome.APPLIED if undo.outcome is ApplyOutcome.UNCHANGED else undo.outcome
    words = {
        ApplyOutcome.APPLIED: f"the guest's files are NEW: they configure {nic.name}, "
                              "which is not attached",
        ApplyOutcome.MIXED: "the guest's files are PARTLY new (check them)",
        ApplyOutcome.UNKNOWN: "whether the guest's files are new is UNKNOWN (check them)",
    }[now]
    return HotplugError(f"{failure}; undoing {nic.name}'s config in the guest FAILED: "
                        f"{words} ({undo.detail})",
                        ApplyResult(now, f"undoing failed: {undo.detail}", undo.guest,
                                    undo.said))


def detach(doc: Mapping[str, Any], port_id: str, ga: GuestAgent, attacher: NicAttacher,
           options: Options | None = None, side: GuestSide | None = None) -> HotplugResult:
    return detach_documents(doc, without_port(doc, port_id), port_id, ga, attacher,
                            options, side)


def detach_documents(before: Mapping[str, Any], after: Mapping[str, Any], port_id: str,
                     ga: GuestAgent, attacher: NicAttacher, options: Options | None = None,
                     side: GuestSide | None = None) -> HotplugResult:
    """Detach the port's NIC, then install the config without it (``after``) as one
    transaction: its files and udev rule go, and its index is free."""
    nic = next((n for n in parse_document(before).instance.nics if n.port_id == port_id),
               None)
    if nic is None:
        raise HotplugError(f"port {port_id!r} is not one of the instance's ports")
    loaded = parse_document(after)
    try:
        attacher.detach(nic)
    except HotplugError as exc:
        raise HotplugError(f"{exc}; nothing was changed in the guest", ApplyResult(
            ApplyOutcome.UNCHANGED, "the NIC could not be detached: the guest was not "
                                    "asked to change anything")) from None
    applied = configure(ga, loaded.instance, options or Options(), side or GuestSide())
    if applied.outcome is not ApplyOutcome.APPLIED:
        raise HotplugError(f"{nic.name} was detached, but {describe(applied)}", applied)
    # Parsing the document without the port already dropped it from ports_pattern.
    return HotplugResult(nic, dict(loaded.system_metadata), None, True, None, applied)
