"""Live changes in a running guest (hot-plug, detach, a Neutron change): which NICs a new
manifest changes, bringing them up through the image's stack, checking the running state
against the manifest, and undoing all of it when any step fails.

The manifest (format 3) says what each NIC's config brings up (contract.NicFacts); the
one last applied is kept in /var/lib/netinject/applied-manifest. A NIC whose facts
differ is changed, one only in the new manifest added, one only in the old removed; the
others are not touched. One change is:

1. the stack takes the changed and removed NICs that are there down with their old
   config (ifupdown; the others read their files again when told);
2. the files are installed as one transaction (install.py), this stack's files of NICs
   gone from the config moved aside with the rest into the backup;
3. the stack brings the changed and added NICs that are there up, and lets go of the
   removed ones (Stack.activate);
4. the running state is read back (``ip -j``): each changed or added NIC has exactly its
   static addresses, its routes and its MTU; a removed NIC none of its old addresses.

If any step fails, the new config is taken down, the files are restored, the old config
brought up again and checked the same way: the guest ends with all old or all new, in
its files and in its running addresses and routes, and LiveFailed says which.
"""

from .contract import (
    STATE_DIR,
    AgentError,
    Manifest,
    NicFacts,
    parse_manifest,
)
from .install import Backup, InstallFailed, install, restore, write_atomic
from .log import Log
from .paths import join, read_small
from .proc import run_command, tool
from .stacks import Changes, Stack, stack_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

APPLIED = STATE_DIR + "/applied-manifest"
VERIFY_TIMEOUT = 20.0  # seconds for a NIC's running state to match its config
CHECK_POLL = 0.2


class LiveFailed(AgentError):
    """A live change failed and was undone; ``broken``: the undoing failed too (or the old
    state could not be confirmed), so the guest is neither all old nor all new."""

    def __init__(self, message: str, broken: bool) -> None:
        AgentError.__init__(self, message)
        self.broken = broken


def read_applied(root: str) -> "tuple[bytes | None, dict[str, NicFacts] | None]":
    """The manifest last applied (first boot or a live change) and its NIC facts; None
    for what there is no record of (the facts: a manifest before format 3)."""
    try:
        raw = read_small(join(root, APPLIED), 1 << 20)
    except OSError:
        return None, None
    try:
        return raw, parse_manifest(raw).facts
    except AgentError:
        return None, None


def record_applied(root: str, manifest: Manifest) -> None:
    write_atomic(root, APPLIED, manifest.raw, 0o600)


def changes_between(root: str, old: "dict[str, NicFacts] | None",
                    new: "dict[str, NicFacts]") -> Changes:
    """Which NICs the change from ``old`` to ``new`` touches. Without a record of the
    old config (an image whose agent predates it), every NIC of the new one is taken as
    changed: brought up again, and checked."""
    if old is None:
        return Changes(root, [], sorted(new), [])
    return Changes(root, sorted(set(new) - set(old)),
                   sorted(n for n in set(new) & set(old) if new[n].key() != old[n].key()),
                   sorted(set(old) - set(new)))


def stale_files(old_raw: "bytes | None", manifest: Manifest, stack: Stack) -> "list[str]":
    """This stack's files the old manifest installed and the new one does not (a NIC
    gone from the config): moved aside in the same transaction."""
    if not old_raw:
        return []
    try:
        old = parse_manifest(old_raw)
    except AgentError:
        return []
    ours = set(e.path for e in manifest.entries)
    return sorted(f.path for f in old.files
                  if stack_of(f.path) is stack and f.path not in ours)


def _ip(root: str, args: "list[str]") -> "list[list[str]]":
    """``ip``'s lines for ``args``, split into words. Its text, not ``ip -j``: the agent
    runs where only python3-minimal is installed, without the json module."""
    ip = tool("ip", root)
    if ip is None:
        raise AgentError("ip (iproute2) is not installed: the running state cannot be read")
    out = run_command([ip, *args], 15, "ip " + " ".join(args))
    return [line.split() for line in out.splitlines() if line.strip()]


def running(root: str, name: str) -> "tuple[set[str], set[tuple[str, str]], int | None]":
    """NIC ``name``'s addresses (CIDR), routes (destination CIDR, gateway; main table)
    and MTU, as the kernel has them."""
    addrs: set[str] = set()
    for words in _ip(root, ["-o", "addr", "show", "dev", name]):
        for i, word in enumerate(words[:-1]):
            if word in ("inet", "inet6"):
                addrs.add(words[i + 1])
    routes: set[tuple[str, str]] = set()
    for family, default, host in (("-4", "0.0.0.0/0", "/32"), ("-6", "::/0", "/128")):
        for words in _ip(root, [family, "route", "show", "dev", name]):
            if "via" not in words[:-1]:
                continue
            dst = words[0]
            dst = default if dst == "default" else dst if "/" in dst else dst + host
            routes.add((dst, words[words.index("via") + 1]))
    try:
        text = read_small(join(root, "sys/class/net", name, "mtu")).decode("ascii").strip()
        mtu: int | None = int(text) if text.isdigit() else None
    except (OSError, UnicodeError):
        mtu = None
    return addrs, routes, mtu


def mismatch(root: str, name: str, want: "NicFacts | None",
             gone: "NicFacts | None") -> "list[str]":
    """What in NIC ``name``'s running state differs from ``want`` (its config: every
    static address, route and the MTU there) or still holds ``gone``'s addresses (an
    old config's, not in ``want``)."""
    addrs, routes, mtu = running(root, name)
    out = []
    if want is not None:
        out += ["no address %s" % a for a in want.static() if a not in addrs]
        out += ["no route to %s via %s" % r for r in want.routes if r not in routes]
        if want.mtu is not None and mtu != want.mtu:
            out.append("MTU %s, not %d" % (mtu, want.mtu))
    if gone is not None:
        keep = set(want.static()) if want is not None else set()
        out += ["still has %s" % a for a in gone.static() if a in addrs and a not in keep]
    return out


def check(root: str, stack: Stack, changes: Changes, want: "dict[str, NicFacts]",
          gone: "dict[str, NicFacts] | None", log: Log,
          timeout: float = VERIFY_TIMEOUT) -> None:
    """Wait (up to ``timeout``, or until the stack gives up on a NIC) until every
    changed or added NIC that is there runs its config and every removed one is rid of
    its old addresses; AgentError saying what differs when they do not."""
    import time

    names = changes.present(changes.changed + changes.added + changes.removed)
    deadline = time.monotonic() + timeout
    while True:
        problems = ["%s: %s" % (n, p) for n in names
                    for p in mismatch(root, n, want.get(n), (gone or {}).get(n))]
        if not problems:
            if names:
                log("running state matches for %s" % ", ".join(names))
            return
        refused = stack.failed(root, names)
        if refused:
            raise AgentError("%s refused the config of %s: %s" % (
                stack.name, ", ".join(refused), "; ".join(problems)[:600]))
        if time.monotonic() >= deadline:
            raise AgentError("the running state does not match after %.0f s: %s"
                             % (timeout, "; ".join(problems)[:600]))
        time.sleep(CHECK_POLL)


def change(root: str, stack: Stack, manifest: Manifest, changes: Changes,
           old: "dict[str, NicFacts] | None", stale: "list[str]", log: Log,
           backup_dir: str, txid: str) -> Backup:
    """One live change (see the module docstring); the backup of what it replaced.
    LiveFailed (the guest all old again, or ``broken``) on any failure after something
    changed; AgentError when it was refused before anything changed."""
    assert manifest.facts is not None
    new = manifest.facts
    deactivated = False
    backup: Backup | None = None
    try:
        stack.deactivate(root, changes, log)
        deactivated = bool(changes.present(changes.changed + changes.removed))
        backup = install(root, manifest, log, backup_dir=backup_dir, remove=stale,
                         txid=txid, skip_same=True)
        changes.files = list(backup.changed)
        reload_udev(root, backup.changed, log)
        stack.activate(root, changes, log)
        check(root, stack, changes, new, old, log)
        remove_empty_dropins(root, stack, stale)
        return backup
    except InstallFailed as exc:
        if not deactivated:
            raise  # the files are as they were and nothing was taken down
        why: str = str(exc)
        problems = [] if not exc.broken else ["files: " + why]
    except AgentError as exc:
        if backup is None and not deactivated:
            raise  # refused before anything changed
        why = str(exc)
        problems = []
    log("live change failed (%s): undoing it" % why)
    undo = changes.reversed()
    if backup is not None:
        _step(problems, "taking the new config down",
              lambda: stack.deactivate(root, undo, log, force=True))
        failed = restore(root, backup, backup.changed, log)
        if failed:
            problems.append("restoring /%s failed" % ", /".join(failed))
    _step(problems, "bringing the old config up", lambda: stack.activate(root, undo, log))
    if old is not None:
        _step(problems, "checking the old config",
              lambda: check(root, stack, undo, old, new, log))
    else:
        log("no record of the old config: its running state is not checked")
    if problems:
        raise LiveFailed("%s; undoing it FAILED: %s" % (why, "; ".join(problems)), True)
    raise LiveFailed("%s; every file and the running state are as they were" % why, False)


def remove_empty_dropins(root: str, stack: Stack, removed: "list[str]") -> None:
    """The drop-in directories the change emptied (a NIC gone: its netplan drop-in moved
    aside) go too; a rollback's restore would make one again."""
    import os

    for d in sorted({d for d in map(stack.dropin, removed) if d is not None}):
        try:
            os.rmdir(join(root, d))
        except OSError:  # not empty (somebody else's file too), or gone
            pass


def reload_udev(root: str, changed: "list[str]", log: Log) -> None:
    """udevd reads its rules again when the NIC-naming rules changed: it would notice by
    itself, but only every few seconds, and a NIC hot-plugged sooner would miss its
    name. Best effort (the names are checked when the NIC is)."""
    udevadm = tool("udevadm", root)
    if udevadm is None or not any(p.startswith("etc/udev/rules.d/") for p in changed):
        return
    try:
        run_command([udevadm, "control", "--reload"], 15, "udevadm control --reload")
        log("udev rules reloaded")
    except AgentError as exc:
        log("could not reload udev's rules: %s" % exc)


def _step(problems: "list[str]", what: str, fn: "Callable[[], None]") -> None:
    try:
        fn()
    except AgentError as exc:
        problems.append("%s: %s" % (what, exc))
