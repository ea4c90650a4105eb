"""``netinject-guest sync``: day 2 on a stock nova, from its metadata API.

nova never rebuilds the config drive (attach, reboot), but its metadata API serves
``openstack/latest/vendor_data2.json`` from the instance's current network info, and
calls netinject's vendordata service on every read. ``sync`` fetches that answer, takes
its ``netinject`` key, checks it exactly as the drive's payload is checked (manifest
format, hashes, allowlist, the manifest's instance equal to this machine's SMBIOS uuid)
and applies it through the same transaction as ``apply`` (txn.apply_from: the changed
NICs only, all old or all new). It runs only after a first boot netinject configured
from the drive: the drive stays authoritative for the first boot.

An answer that cannot be had or used (unreachable, an HTTP error, not JSON, cut short,
too large, ``{}`` or no ``netinject`` key, another instance's) is "no information":
nothing changes, the log says why. Never "remove everything".

Triggers (installed by ``netinject-guest install``, image.py): udev's ``add`` of a NIC
runs ``sync --mac MAC``, which asks again with backoff until the answer carries the MAC
(nova caches an instance's answer up to 15 s); udev's ``remove`` runs ``sync --removed
NAME``, which asks until the answer no longer carries that NIC, then applies it (as the
host's ``hotplug detach`` applies a bundle without the NIC: the NIC's files and udev rule
go in one transaction; the guest never writes config the host did not render), also for
a NIC whose config was not recorded yet (a transaction adding it in flight); a timer
runs ``sync`` for drift. The answer is fetched without the apply lock, so a metadata
API that is slow or absent (a cloud that drives day 2 through qemu-guest-agent) never
holds back the host's own apply; under the lock it is applied only if no transaction
ended and no other sync went on with a newer answer while it was fetched (else it is
fetched again), so an older answer never lands over a newer one. No answer at all on
the first ask (unreachable, an HTTP error) means no metadata API to wait for: sync ends
at once, unchanged; an answer that does not yet carry an awaited change is asked for
again with backoff.
"""

import os
import sys
import time

from .contract import (
    BUNDLE_MAX,
    KEEP_SYMLINKS,
    STATE_FILE,
    VENDOR_DIR,
    VENDOR_FILE,
    AgentError,
    Entry,
    Manifest,
    NicFacts,
    Outcome,
    format_result,
    is_ipv4,
    is_mac,
    is_nic_name,
    parse_state,
    vendor_payload,
)
from .discovery import system_uuid
from .install import Target, target_stat, write_atomic
from .live import read_applied
from .log import Log
from .nics import current_names
from .paths import join, lexists, read_small
from .stacks import stack_of
from .txn import LIVE_LOCK_WAIT, Ended, apply_from, prepare

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

METADATA_URL = "http://169.254.169.254"
VENDOR_URL_PATH = "/%s/%s" % (VENDOR_DIR, VENDOR_FILE)
# nova's own limits for its vendordata targets: 5 s to connect, 5 s per read (sync
# --timeout). The whole answer must come within twice that: a server dripping bytes
# cannot hold the lock.
FETCH_TIMEOUT = 5.0
WAIT_FOR_MAC = 60.0
# Backoff between asks while waiting for a NIC to appear in (or go from) the answer:
# nova's metadata cache holds an instance's answer up to 15 s (metadata_cache_expiration).
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0)
# Answers fetched again at once because a transaction ended while one was fetched.
STALE_RETRIES = 3


class NoAnswer(AgentError):
    """The metadata API gave no usable answer (nothing changes)."""


def parse_metadata_url(text: str) -> str:
    """``http://HOST[:PORT]`` (an optional '/' after it), HOST an IPv4 literal or a plain
    host name: no other scheme, no user info, path, query, fragment, IPv6 or zone id.
    The base URL without the '/'; ValueError saying what is wrong."""
    import re

    m = re.fullmatch(r"http://([A-Za-z0-9.-]{1,253})(?::([0-9]{1,5}))?/?", text, re.ASCII)
    if m is None:
        raise ValueError("%r is not http://HOST[:PORT] (HOST an IPv4 address or a host "
                         "name; no https, user, path or query)" % text)
    host, port = m.group(1), m.group(2)
    label = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    if re.fullmatch(r"[0-9.]+", host, re.ASCII):
        if not is_ipv4(host):
            raise ValueError("%r: %r is not an IPv4 address" % (text, host))
    elif not re.fullmatch(r"%s(?:\.%s)*" % (label, label), host, re.ASCII):
        raise ValueError("%r: %r is not a host name" % (text, host))
    if port is not None and not (port[0] != "0" and 1 <= int(port) <= 65535):
        raise ValueError("%r: port %r is not 1-65535" % (text, port))
    return "http://%s%s" % (host, ":" + port if port else "")


def parse_mac_arg(text: str) -> str:
    """A MAC address as udev gives it (six hex pairs, ':'-separated), lower-cased."""
    import re

    if not re.fullmatch(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}", text, re.ASCII):
        raise ValueError("%r is not a MAC address (six hex pairs: fa:16:3e:00:00:01)"
                         % text)
    mac = text.lower()
    assert is_mac(mac)
    return mac


def parse_nic_arg(text: str) -> str:
    """The name of a NIC netinject names (eth0 ... eth9999)."""
    import re

    if not (re.fullmatch(r"eth[0-9]{1,4}", text, re.ASCII) and is_nic_name(text)):
        raise ValueError("%r is not a NIC name netinject gives (eth0, eth1, ...)" % text)
    return text


def fetch_vendordata(base: str, log: Log, timeout: float = FETCH_TIMEOUT) -> bytes:
    """The body of BASE/openstack/latest/vendor_data2.json: no proxy, no redirect, at
    most BUNDLE_MAX bytes, all of it (a body shorter than its Content-Length is cut, not
    an answer). NoAnswer saying why otherwise."""
    import http.client
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None  # (urllib then raises the 3xx as an HTTPError)

    url = base + VENDOR_URL_PATH
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())
    deadline = time.monotonic() + 2 * timeout
    try:
        with opener.open(urllib.request.Request(url, headers={"Accept": "application/json"}),
                         timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and not (length.isdigit() and length.isascii()):
                raise NoAnswer("%s: bad Content-Length %r" % (url, length[:40]))
            if length is not None and int(length) > BUNDLE_MAX:
                raise NoAnswer("%s: the answer is too large (%s bytes, at most %d)"
                               % (url, length, BUNDLE_MAX))
            chunks: list[bytes] = []
            total = 0
            while True:
                if time.monotonic() > deadline:
                    raise NoAnswer("%s: the answer did not come within %g s"
                                   % (url, 2 * timeout))
                chunk = resp.read(65536)
                if not chunk:
                    break
                total += len(chunk)
                if total > BUNDLE_MAX:
                    raise NoAnswer("%s: the answer is too large (over %d bytes)"
                                   % (url, BUNDLE_MAX))
                chunks.append(chunk)
            if length is not None and total != int(length):
                raise NoAnswer("%s: the answer was cut (%d of %s bytes)" % (url, total, length))
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        raise NoAnswer("%s: HTTP %d %s" % (url, exc.code, exc.reason)) from None
    except urllib.error.URLError as exc:
        raise NoAnswer("%s: unreachable (%s)" % (url, exc.reason)) from None
    except http.client.IncompleteRead as exc:
        raise NoAnswer("%s: the answer was cut (%d bytes read)" % (url, len(exc.partial))
                       ) from None
    except (http.client.HTTPException, OSError) as exc:  # (timeouts are OSErrors)
        raise NoAnswer("%s: %s" % (url, exc or type(exc).__name__)) from None


class SyncArgs:
    """``sync``'s options, already checked (run.py's parser)."""

    def __init__(self, root: str = "/", sysfs: "str | None" = None,
                 url: str = METADATA_URL, dry_run: bool = False,
                 lock_wait: float = LIVE_LOCK_WAIT, macs: "list[str] | None" = None,
                 removed: "list[str] | None" = None,
                 wait_for_mac: float = WAIT_FOR_MAC, timeout: float = FETCH_TIMEOUT
                 ) -> None:
        self.root = root
        self.sysfs = sysfs or join(root, "sys")
        self.url = url
        self.dry_run = dry_run
        self.lock_wait = lock_wait
        self.macs = macs or []
        self.removed = removed or []
        self.wait_for_mac = wait_for_mac
        self.timeout = timeout


def _first_booted(args: SyncArgs) -> None:
    """AgentError unless netinject configured this machine's first boot (the state file
    names its SMBIOS uuid): the drive is authoritative for the first boot."""
    try:
        state = parse_state(read_small(join(args.root, STATE_FILE)))
    except OSError:
        state = []
    system = system_uuid(args.sysfs)
    if state[:1] != [system]:
        raise AgentError("netinject did not configure this instance's first boot (no "
                         "/%s naming %s): the config drive decides the first boot; "
                         "nothing synced" % (STATE_FILE, system))


class Awaited:
    """What a udev-triggered sync waits for in the answer: the MACs of NICs that
    appeared, and the NICs that went: by name and MAC (from the applied manifest), or
    by name alone (None) for one whose config was not recorded when it went (a
    transaction adding it still in flight: it waits until the answer no longer names
    it with a MAC this machine lacks, and applies that answer, which takes away what
    landed meanwhile)."""

    def __init__(self, macs: "list[str]", gone: "list[tuple[str, str | None]]",
                 sysfs: str = "/sys") -> None:
        self.macs = macs
        self.gone = gone
        self.sysfs = sysfs

    def __bool__(self) -> bool:
        return bool(self.macs or self.gone)

    def left(self) -> "list[str]":
        """The awaited MACs (a NIC that appeared) that are no longer on this machine."""
        if not self.macs:
            return []
        here = current_names(self.sysfs)
        return [m for m in self.macs if m not in here]

    def pending(self, manifest: Manifest) -> "list[str]":
        nics = set(manifest.nics)
        macs = set(mac for _, mac in manifest.nics)
        out = ["MAC %s not in it yet" % m for m in self.macs if m not in macs]
        here: dict[str, str] | None = None
        for name, mac in self.gone:
            if mac is not None:
                if (name, mac) in nics:
                    out.append("%s (%s) still in it" % (name, mac))
                continue
            if here is None:
                here = current_names(self.sysfs)
            out += ["%s (%s) still in it, not on this machine" % (name, m)
                    for n, m in manifest.nics if n == name and m not in here]
        return out


def awaited(args: SyncArgs, log: Log) -> Awaited:
    """What of --mac and --removed needs the metadata answer: a MAC the applied config
    already names needs nothing (udev's add at every boot), nor a name it does not (not
    netinject's NIC)."""
    _, old = read_applied(args.root)
    old = old or {}
    macs = []
    for mac in args.macs:
        named = [n for n, f in old.items() if f.mac == mac]
        if named:
            log("MAC %s is already configured (%s): nothing to wait for" % (mac, named[0]))
        else:
            macs.append(mac)
    gone: list[tuple[str, str | None]] = []
    for name in args.removed:
        if name in old:
            gone.append((name, old[name].mac))
        else:
            # Not configured now, but a sync that fetched the answer before the NIC
            # went may still install its config: waited for as the answer says.
            log("%s is not configured now: waiting until the answer no longer names it "
                "with a MAC this machine lacks" % name)
            gone.append((name, None))
    return Awaited(macs, gone, args.sysfs)


GENERATION = "run/netinject/sync-generation"


def generation(root: str) -> bytes:
    """The mark of the last answer a sync took under the lock (b"": none this boot)."""
    try:
        return read_small(join(root, GENERATION))
    except OSError:
        return b""


def mark_newest(root: str) -> None:
    """Under the lock, for an answer a sync goes on to apply (even one that changes
    nothing): every answer fetched before it is stale from now on (Fetched)."""
    try:
        write_atomic(root, GENERATION,
                     ("%x %d\n" % (time.time_ns(), os.getpid())).encode(), 0o600)
    except OSError as exc:  # (before anything changed: refused, not broken)
        raise AgentError("cannot mark the answer taken (/%s): %s" % (GENERATION, exc)
                         ) from None


class Fetched:
    """A fetched answer as apply_from's source: called under the lock, it refuses
    (AgentError, ``stale``) if a transaction ended since the answer was fetched, whose
    change the answer may not carry, or if another sync went on with a newer answer
    meanwhile (mark_newest: even one that changed nothing, which an older answer must
    not undo)."""

    def __init__(self, root: str, payload: "dict[str, bytes]",
                 before: "tuple[bytes | None, bytes]") -> None:
        self.root = root
        self.payload = payload
        self.applied_before, self.generation_before = before
        self.stale = False

    def __call__(self) -> "dict[str, bytes]":
        if read_applied(self.root)[0] != self.applied_before:
            self.stale = True
            raise AgentError("another transaction changed the config while this answer "
                             "was fetched")
        if generation(self.root) != self.generation_before:
            self.stale = True
            raise AgentError("another sync took a newer answer while this one was fetched")
        return self.payload


def sync(args: SyncArgs, log: Log) -> "tuple[Ended, list[str]]":
    """One sync (see the module docstring); how it ended, and for --dry-run what would
    change (lines for people)."""
    txid = "sync-%x-%d" % (time.time_ns(), os.getpid())
    try:
        _first_booted(args)
        wanted = awaited(args, log)
    except AgentError as exc:
        return Ended(txid, Outcome.UNCHANGED, str(exc)), []
    if (args.macs or args.removed) and not wanted:
        return Ended(txid, Outcome.UNCHANGED, "nothing to wait for"), []
    deadline = time.monotonic() + (args.wait_for_mac if wanted else 0.0)
    missing: list[str] = []
    answered = False
    stale_left = STALE_RETRIES

    def want(manifest: Manifest) -> None:
        left = wanted.left()
        if left:
            # The NIC went again before its config came (a quick detach): nothing to
            # configure, nor to wait for; its remove trigger sees to the answer.
            missing[:] = []
            raise AgentError("%s no longer on this machine: nothing to configure"
                             % ", ".join("MAC " + m for m in left))
        missing[:] = wanted.pending(manifest)
        if missing:
            raise AgentError("the metadata answer does not say it yet: "
                             + "; ".join(missing))
        if not args.dry_run:
            mark_newest(args.root)  # (under the lock: this answer goes on)

    attempt = 0
    diff: list[str] = []
    while True:
        # The answer is fetched without the lock (a slow or silent metadata API must not
        # hold back the host's apply through qemu-guest-agent); under the lock it is
        # applied only if no transaction ended in between, else asked for again.
        before = read_applied(args.root)[0], generation(args.root)
        missing[:] = ["an answer"]  # (until want() has seen one)
        stale = False
        try:
            payload = vendor_payload(fetch_vendordata(args.url, log, args.timeout))
        except AgentError as exc:
            if not answered:
                # No answer at all (unreachable, an HTTP error, not nova's JSON): no
                # metadata API to wait for here; the drift timer asks again.
                log("no information: %s" % exc)
                return Ended(txid, Outcome.UNCHANGED, str(exc)), []
            ended = Ended(txid, Outcome.UNCHANGED, str(exc))
        else:
            answered = True
            fetched = Fetched(args.root, payload, before)
            if args.dry_run:
                ended, diff = dry_run(args, txid, fetched, want, log)
            else:
                ended, diff = apply_from(args.root, args.sysfs, txid, fetched, log,
                                         args.lock_wait, want, record_unchanged=False), []
            stale = fetched.stale
        if stale and stale_left:
            stale_left -= 1
            log("asking again: %s" % ended.message)
            continue
        waiting = bool(wanted) and (bool(missing) or ended.outcome == Outcome.BUSY)
        delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
        if not waiting or time.monotonic() + delay > deadline:
            break
        log("asking again in %g s (%s)" % (delay, ended.message))
        time.sleep(delay)
        attempt += 1
    if waiting:
        left = ["%s: left to the image's default config" % m for m in wanted.macs]
        left += ["%s: its config stays until the answer drops it (the drift timer asks "
                 "again)" % n for n, _ in wanted.gone]
        log("gave up after %g s: %s" % (args.wait_for_mac, "; ".join(left)))
        ended = Ended(txid, ended.outcome, "%s after %g s; %s" % (
            ended.message, args.wait_for_mac, "; ".join(left)))
    return ended, diff


def dry_run(args: SyncArgs, txid: str, source: "Callable[[], dict[str, bytes]]",
            want: "Callable[[Manifest], None]", log: Log) -> "tuple[Ended, list[str]]":
    """What sync would change, read only: no lock, no backup, no state written."""
    try:
        stack, manifest, changes, old, stale = prepare(args.root, args.sysfs, source(),
                                                       False, want)
    except AgentError as exc:
        log("no information: %s" % exc)
        return Ended(txid, Outcome.UNCHANGED, str(exc)), []
    assert manifest.facts is not None
    lines = ["instance %s, network stack %s" % (manifest.uuid, stack.name)]
    files = []
    for e in manifest.entries:
        what = _file_change(args.root, e)
        if what:
            files.append("  %s /%s" % (what, e.path))
    files += ["  removed /%s (moved aside)" % p for p in stale
              if lexists(join(args.root, p)) and stack_of(p) is stack]
    lines.append("files:" if files else "files: none would change")
    lines += files
    lines.append("NICs: %s" % changes)
    for name in changes.added + changes.changed + changes.removed:
        lines += _nic_diff(name, (old or {}).get(name), manifest.facts.get(name))
    n = len(files)
    return Ended(txid, Outcome.UNCHANGED, "dry run: %d file(s) would change; %s"
                 % (n, changes), would_change=str(n)), lines


def _file_change(root: str, entry: Entry) -> str:
    """'added', 'changed', 'mode' (the same bytes; a private file whose mode or owner
    the apply would fix) or '' (what the apply leaves alone: the same file by
    install.Target.same, which lets a replaced file keep its own mode, or a symlink
    the agent keeps) for the file the payload puts at ``entry.path``."""
    full = join(root, entry.path)
    try:
        kind, st = target_stat(full)
    except AgentError:
        return "changed"
    if kind == "absent":
        return "added"
    if kind == "symlink" and entry.path in KEEP_SYMLINKS:
        return ""
    if kind != "file" or Target(entry, full, kind, st).same():
        return "" if kind == "file" else "changed"
    try:
        same_bytes = read_small(full, len(entry.data) + 1) == entry.data
    except OSError:
        same_bytes = False
    return "mode" if same_bytes else "changed"


def _nic_diff(name: str, old: "NicFacts | None", new: "NicFacts | None") -> "list[str]":
    """A NIC's facts, old -> new, one line per fact that differs."""
    out = ["  %s %s:" % (name, "added" if old is None else "removed" if new is None
                         else "changed")]
    for fact in ("mac", "mtu", "addrs", "routes", "dns"):
        a = _fact_text(old, fact)
        b = _fact_text(new, fact)
        if a != b:
            out.append("    %s: %s -> %s" % (fact, a, b))
    return out


def _fact_text(facts: "NicFacts | None", fact: str) -> str:
    if facts is None:
        return "-"
    value = getattr(facts, fact)
    if isinstance(value, list):
        return ", ".join(" via ".join(v) if isinstance(v, tuple) else v for v in value) \
            or "none"
    return "-" if value is None else str(value)


def sync_main(args: SyncArgs) -> int:
    """``netinject-guest sync``: the diff (--dry-run) and the result line on stdout, the
    log to the file and stderr (--dry-run: stderr only, nothing written). Exit status as
    apply's (0 applied, 1 unchanged, 3 broken); --dry-run: 0 when it read an answer."""
    log = Log(args.root, quiet=False)
    diff: list[str] = []
    try:
        ended, diff = sync(args, log)
        line, status = ended.line, ended.status
        if args.dry_run:
            status = 0 if diff else 1
    except (OSError, AgentError) as exc:
        line = format_result(Outcome.BROKEN if not args.dry_run else Outcome.UNCHANGED,
                             message="sync failed: %s" % exc)
        status = 3 if not args.dry_run else 1
        log(line)
    if args.dry_run:
        if log.lines:
            sys.stderr.write("\n".join(log.lines) + "\n")
    else:
        log.flush()
    try:
        sys.stdout.write("".join(x + "\n" for x in diff) if args.dry_run and status == 0
                         else "")
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except OSError:
        pass
    return status
