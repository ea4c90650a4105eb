"""``netinject sync``: deliver a change of the instance's network (a subnet's host routes
or DNS servers, a network's MTU, a port's fixed IPs, ports added or gone) to the running
guest, through qemu-guest-agent, as one transaction.

1. The instance is rendered as for a hot-plug (hotplug.bundle_for: every stack's files
   and the manifest, format 3, with each NIC's facts).
2. What the guest has is read, without changing anything (read_guest): its agent's
   version (``netinject-guest --version``: live changes need 0.2.0), its stack
   (/etc/netinject/stack), the manifest it last applied
   (/var/lib/netinject/applied-manifest, written by its first boot and every apply),
   and the files the bundle would install for that stack, plus that stack's files the
   applied manifest lists and the new one does not (the agent moves those aside).
3. ``diff`` (pure) compares them: files by guest path (added, changed, removed; a
   resolv.conf symlink the image manages is left out: the agent keeps it) and, per
   NIC, the applied manifest's facts with the new ones (addresses, routes and DNS
   servers added or removed, the MTU, NICs added or removed). The guest has nothing to
   change when neither differs.
4. Otherwise the bundle goes to ``netinject-guest apply`` as one transaction
   (hotplug.apply_in_guest): the agent installs the files, brings the changed NICs up
   through the image's stack, checks their running state, and undoes everything on a
   failure; its typed outcome and the host's reading of the files say what the guest
   ended with.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from . import hotplug
from .errors import UsageError
from .guest import contract
from .guest.stacks import Stack, stack_of
from .model import Instance
from .qga import GuestAgent, QgaError, QgaTimeout, QgaUnavailable
from .render import Options

APPLIED_MANIFEST = contract.STATE_DIR + "/applied-manifest"
"""The manifest the guest's agent last applied (guest/live.py APPLIED)."""

ADDED, CHANGED, REMOVED = "added", "changed", "removed"


@dataclass(frozen=True)
class FileChange:
    path: str  # guest path, relative ('etc/network/interfaces')
    change: str  # ADDED, CHANGED or REMOVED
    old: bytes | None  # what the guest has (None: nothing)
    new: bytes | None  # what the bundle brings (None: moved aside)

    def unified(self) -> str:
        """The change as a unified diff (text files; bytes that are not UTF-8 shown
        replaced)."""
        def lines(data: bytes | None) -> list[str]:
            return (data or b"").decode("utf-8", "replace").splitlines(keepends=True)

        out = difflib.unified_diff(lines(self.old), lines(self.new),
                                   f"a/{self.path}" if self.old is not None else "/dev/null",
                                   f"b/{self.path}" if self.new is not None else "/dev/null")
        text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end "
                       "of file\n" for line in out)
        return text


@dataclass(frozen=True)
class NicChange:
    """One NIC's change, from the applied manifest's facts to the new ones."""

    name: str
    change: str  # ADDED, CHANGED or REMOVED
    mac: str  # the new MAC (a removed NIC's old one)
    old_mac: str | None = None  # when it changed
    mtu: tuple[int | None, int | None] | None = None  # (old, new) when it changed
    addrs_added: tuple[str, ...] = ()
    addrs_removed: tuple[str, ...] = ()
    routes_added: tuple[tuple[str, str], ...] = ()
    routes_removed: tuple[tuple[str, str], ...] = ()
    dns_added: tuple[str, ...] = ()
    dns_removed: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """What changed, one fact a line ('+ route 198.51.100.0/24 via 192.0.2.1')."""
        out = []
        if self.old_mac is not None:
            out.append(f"MAC {self.old_mac} -> {self.mac}")
        if self.mtu is not None:
            old, new = (str(m) if m is not None else "(default)" for m in self.mtu)
            out.append(f"MTU {old} -> {new}")
        out += [f"+ address {a}" for a in self.addrs_added]
        out += [f"- address {a}" for a in self.addrs_removed]
        out += [f"+ route {d} via {g}" for d, g in self.routes_added]
        out += [f"- route {d} via {g}" for d, g in self.routes_removed]
        out += [f"+ DNS server {d}" for d in self.dns_added]
        out += [f"- DNS server {d}" for d in self.dns_removed]
        return out


@dataclass(frozen=True)
class Diff:
    files: tuple[FileChange, ...]
    nics: tuple[NicChange, ...]
    kept: tuple[str, ...] = ()  # guest paths the agent leaves as they are (symlinks)
    nics_known: bool = True  # False: the guest has no record of its NICs' facts

    @property
    def changed(self) -> bool:
        return bool(self.files or self.nics)


def _minus(a: Iterable[Any], b: Iterable[Any]) -> tuple[Any, ...]:
    gone = set(b)
    return tuple(x for x in a if x not in gone)


def nic_changes(old: Mapping[str, contract.NicFacts],
                new: Mapping[str, contract.NicFacts]) -> tuple[NicChange, ...]:
    """Per NIC (by name, in order), what the change from ``old`` to ``new`` facts
    brings: the NICs added and removed with all their facts, and for the NICs in both
    whose facts differ, the MAC and MTU if they changed and the addresses, routes and
    DNS servers added and removed."""
    out = []
    for name in sorted(set(old) | set(new), key=lambda n: (len(n), n)):
        o, n = old.get(name), new.get(name)
        if o is None and n is not None:
            out.append(NicChange(name, ADDED, n.mac, None,
                                 (None, n.mtu) if n.mtu is not None else None,
                                 tuple(n.addrs), (), tuple(n.routes), (), tuple(n.dns)))
        elif n is None and o is not None:
            out.append(NicChange(name, REMOVED, o.mac, None, None, (), tuple(o.addrs),
                                 (), tuple(o.routes), (), tuple(o.dns)))
        elif o is not None and n is not None and o.key() != n.key():
            out.append(NicChange(
                name, CHANGED, n.mac, o.mac if o.mac != n.mac else None,
                (o.mtu, n.mtu) if o.mtu != n.mtu else None,
                _minus(n.addrs, o.addrs), _minus(o.addrs, n.addrs),
                _minus(n.routes, o.routes), _minus(o.routes, n.routes),
                _minus(n.dns, o.dns), _minus(o.dns, n.dns)))
    return tuple(out)


def diff(have: Mapping[str, bytes | None], want: Mapping[str, bytes],
         old: contract.ManifestRecords | None, new: contract.ManifestRecords,
         stack: Stack, kept: Iterable[str] = ()) -> Diff:
    """What a sync changes in the guest (pure).

    ``have``: the guest's bytes at each guest path (None: no file there), at least every
    path of ``want`` and of ``old``'s files; ``want``: the files the bundle brings for the
    guest's ``stack`` (its own and the shared ones), by guest path; ``old``: the manifest
    the guest last applied (None: it has no record); ``new``: the bundle's manifest;
    ``kept``: paths the guest keeps as they are (a symlink the image manages), left out.

    Files: added (nothing there now), changed (other bytes there), removed (a file of
    this stack the applied manifest installed and the new one does not, still there: the
    agent moves it aside). NICs: nic_changes of the two manifests' facts; without a record
    (no applied manifest, or one before format 3) only the files are compared.
    """
    skip = set(kept)
    files = []
    for path in sorted(want):
        if path in skip:
            continue
        now = have.get(path)
        if now is None:
            files.append(FileChange(path, ADDED, None, want[path]))
        elif now != want[path]:
            files.append(FileChange(path, CHANGED, now, want[path]))
    for rec in old.files if old is not None else []:
        if rec.path in want or stack_of(rec.path) is not stack:
            continue
        now = have.get(rec.path)
        if now is not None:
            files.append(FileChange(rec.path, REMOVED, now, None))
    files.sort(key=lambda f: f.path)
    known = old is not None and old.facts is not None and new.facts is not None
    nics = nic_changes(old.facts or {}, new.facts or {}) if known and old is not None else ()
    return Diff(tuple(files), nics, tuple(sorted(skip & set(want))), known)


# -- reading the guest ----------------------------------------------------------------------


@dataclass(frozen=True)
class GuestView:
    """What the guest has, read without changing anything."""

    agent: str  # its agent's version
    stack: Stack
    applied: contract.ManifestRecords | None  # the manifest it last applied
    note: str  # why there is no applied manifest ('' when there is)
    files: Mapping[str, bytes | None]  # by guest path (None: nothing there)
    kept: frozenset[str]  # paths it keeps as they are (symlinks the image manages)


def read_guest(ga: GuestAgent, side: hotplug.GuestSide, want: Iterable[str],
               instance: Instance) -> GuestView:
    """Read the guest (see GuestView). HotplugError (nothing changed) when its agent is
    missing or too old or its stack unknown; UsageError when the manifest it applied
    names another instance (the wrong guest); QgaError when the agent cannot be asked."""
    ga.ping()
    agent = hotplug.agent_version(ga, side)
    stack = hotplug.guest_stack(ga, side)
    applied: contract.ManifestRecords | None = None
    note = ""
    try:
        raw = ga.read_file(side.path(PurePosixPath(APPLIED_MANIFEST)))
    except (QgaTimeout, QgaUnavailable):
        raise
    except QgaError:
        note = f"no /{APPLIED_MANIFEST}"
    else:
        try:
            applied = contract.parse_manifest(raw)
        except contract.AgentError as exc:
            note = f"/{APPLIED_MANIFEST} is not a manifest this netinject reads ({exc})"
    if applied is not None and applied.uuid != str(instance.uuid):
        raise UsageError(f"the guest applied the config of instance {applied.uuid}, not "
                         f"{instance.uuid}'s: the wrong guest? Nothing was changed")
    if applied is not None and applied.facts is None:
        note = (f"/{APPLIED_MANIFEST} is format {applied.format}: it says nothing of the "
                "NICs")
    ours = [p for p in want if stack_of(p) in (None, stack)]
    stale = [r.path for r in applied.files if stack_of(r.path) is stack
             and r.path not in ours] if applied is not None else []
    files = hotplug.read_files(ga, side, [*ours, *stale])
    kept = frozenset(p for p in contract.KEEP_SYMLINKS
                     if p in ours and hotplug.is_symlink(ga, side, p))
    return GuestView(agent, stack, applied, note, files, kept)


@dataclass(frozen=True)
class Sync:
    """A sync worked out: the instance, what the guest has, and what would change."""

    instance: Instance
    view: GuestView
    diff: Diff


def plan(ga: GuestAgent, instance: Instance, options: Options,
         side: hotplug.GuestSide) -> Sync:
    """Render the instance, read the guest, compare (nothing in the guest changes)."""
    raw, rendered = hotplug.bundle_for(instance, options)
    new = contract.parse_manifest(contract.parse_bundle(raw)[contract.MANIFEST_NAME])
    view = read_guest(ga, side, rendered, instance)
    want = {p: c for p, c in rendered.items() if stack_of(p) in (None, view.stack)}
    return Sync(instance, view, diff(view.files, want, view.applied, new, view.stack,
                                     view.kept))


def apply(ga: GuestAgent, sync: Sync, options: Options,
          side: hotplug.GuestSide) -> hotplug.ApplyResult:
    """Apply the change as one transaction; what the guest's files are now."""
    return hotplug.apply_in_guest(ga, sync.instance, options, side, check_agent=False)


# -- words ------------------------------------------------------------------------------


def report(sync: Sync, diffs: bool = False) -> list[str]:
    """The change in words: one line per file, the NICs' changes, and with ``diffs`` a
    unified diff of each file."""
    d, v = sync.diff, sync.view
    out = [f"instance {sync.instance.uuid}: guest agent {v.agent}, stack {v.stack.name}"]
    if not d.files:
        out.append("files: none to change")
    else:
        counts = ", ".join(f"{sum(f.change == c for f in d.files)} {c}"
                           for c in (CHANGED, ADDED, REMOVED)
                           if any(f.change == c for f in d.files))
        out.append(f"files ({counts}):")
        out += [f"  {f.change:<8} /{f.path}" for f in d.files]
    out += [f"  kept     /{p} (a symlink the image manages: the agent leaves it)"
            for p in d.kept]
    if not d.nics_known:
        out.append(f"NICs: not compared ({v.note}); the files decide")
    elif not d.nics:
        out.append("NICs: no change")
    else:
        out.append("NICs:")
        for n in d.nics:
            out.append(f"  {n.name} ({n.mac}) {n.change}")
            out += [f"    {line}" for line in n.lines()]
    if diffs:
        out += [f.unified().rstrip("\n") for f in d.files]
    return out


def to_json(sync: Sync) -> dict[str, Any]:
    """The change for tools (netinject sync --json)."""
    d, v = sync.diff, sync.view
    return {
        "instance": str(sync.instance.uuid),
        "agent": v.agent,
        "stack": v.stack.name,
        "changed": d.changed,
        "files": [{"path": "/" + f.path, "change": f.change, "diff": f.unified()}
                  for f in d.files],
        "kept": ["/" + p for p in d.kept],
        "nics_compared": d.nics_known,
        "nics": [{"name": n.name, "change": n.change, "mac": n.mac, "old_mac": n.old_mac,
                  "mtu": list(n.mtu) if n.mtu is not None else None,
                  "addresses": {"added": list(n.addrs_added),
                                "removed": list(n.addrs_removed)},
                  "routes": {"added": [{"destination": r[0], "gateway": r[1]}
                                       for r in n.routes_added],
                             "removed": [{"destination": r[0], "gateway": r[1]}
                                         for r in n.routes_removed]},
                  "dns": {"added": list(n.dns_added), "removed": list(n.dns_removed)}}
                 for n in d.nics],
    }
