"""The image's network stack: which of the drive's files to install, and what each stack
needs beyond the files.

A drive carries the config of every stack (ifupdown, systemd-networkd, netplan,
NetworkManager); ``netinject-guest install`` records the image's stack in
/etc/netinject/stack, and the agent installs that stack's files and the shared ones
(udev rules, resolv.conf, hostname). An image without the file is an ifupdown image
(agents before stacks were known served only those).

* netplan (<= 1.1: bookworm's 0.106, Ubuntu 22.04 and 24.04): its systemd generator ran
  before any unit, from the image's own YAML. So the agent also moves aside the image's
  YAML files that configure ethernets (kept in the backup, restored on rollback) and runs
  netplan's generator itself, as cloud-init does. netplan >= 1.2 generates in
  netplan-configure.service, which the agent's unit is ordered before: nothing to run.
* systemd-networkd (and netplan on networkd) sends no gratuitous ARP: the agent leaves
  the static IPv4 addresses in /run/netinject/announce, and netinject-announce.service
  (after networkd; skipped when the file is absent) announces each once it is up, without
  holding the address back as networkd's DuplicateAddressDetection=ipv4 would (~6 s).
* NetworkManager announces by itself (3 gratuitous ARPs); ifupdown's file does.
"""

import posix

from .contract import (
    MAX_FILE,
    STACKS,
    AgentError,
    Manifest,
    is_ipv4,
    is_nic_name,
    is_plain_name,
    stack_of,
)
from .install import write_atomic
from .log import Log
from .paths import exists, join, read_small

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STACK_CONFIG = "etc/netinject/stack"
NETPLAN_DIR = "etc/netplan/"
# netplan.io 0.106 ships /usr/libexec/netplan/generate (older: /lib/netplan/generate).
NETPLAN_GENERATORS = ("usr/libexec/netplan/generate", "usr/lib/netplan/generate",
                      "lib/netplan/generate")
NETPLAN_CONFIGURE_UNITS = ("usr/lib/systemd/system/netplan-configure.service",
                           "lib/systemd/system/netplan-configure.service")
# The generator normally takes well under a second (under emulation too); a FIFO among
# the image's YAML files would hold it forever. Twice this (a run, and the run on the
# image's own files after a rollback) stays inside the unit's TimeoutStartSec=30.
NETPLAN_TIMEOUT = 10.0
# netplan.io depends on python3-yaml (Debian, Ubuntu), installed here; the agent runs as
# python3 -IS, without this directory on sys.path.
DIST_PACKAGES = "/usr/lib/python3/dist-packages"
# What in an image's netplan file would define or build on the NICs our file defines.
NETPLAN_NIC_KEYS = ("ethernets", "bonds", "bridges", "vlans")
SIGKILL = 9  # (on every Linux architecture; the signal module costs an import)
ANNOUNCE_FILE = "run/netinject/announce"
ANNOUNCING_STACKS = ("networkd", "netplan")


def read_stack(root: str) -> str:
    """The stack ``install`` recorded ('ifupdown' when there is no record)."""
    try:
        text = read_small(join(root, STACK_CONFIG)).decode("ascii").strip()
    except FileNotFoundError:
        return "ifupdown"
    except (OSError, UnicodeError) as exc:
        raise AgentError("cannot read /%s: %s" % (STACK_CONFIG, exc)) from None
    if text not in STACKS:
        raise AgentError("/%s names an unknown stack %r" % (STACK_CONFIG, text[:40]))
    return text


def for_stack(manifest: Manifest, stack: str) -> Manifest:
    """The manifest with only the files for ``stack`` and the shared ones."""
    entries = [e for e in manifest.entries if stack_of(e.path) in (None, stack)]
    if not any(stack_of(e.path) == stack for e in entries):
        raise AgentError("the drive carries no %s config (made by a netinject that did "
                         "not know this stack?)" % stack)
    return Manifest(manifest.uuid, entries, manifest.nics, manifest.announce)


def _load_yaml() -> "Any":
    """PyYAML, from the running system's python3-yaml: at boot the guest's own (a
    dependency of netplan.io), under --root (tests) the host's. Its directory is added
    after the standard library for this one import, so nothing there can shadow a
    standard module. AgentError without it: the image's files cannot be judged."""
    import sys

    try:
        import yaml  # (already importable: a test's interpreter)
    except ImportError:
        sys.path.append(DIST_PACKAGES)
        try:
            import yaml
        except ImportError:
            raise AgentError("cannot read the image's netplan files: no PyYAML "
                             "(python3-yaml) in %s" % DIST_PACKAGES) from None
        finally:
            sys.path.remove(DIST_PACKAGES)
    return yaml


def netplan_defines_nics(yaml: "Any", text: bytes) -> bool:
    """Whether an image's netplan file must make way for ours, from its parsed document
    (yaml.safe_load): its ``network`` defines ethernets, or bonds, bridges or vlans
    (built on ethernets: left with theirs moved aside, netplan would refuse them).
    Other files (renderer, wifis, an empty file) stay.

    A file that cannot be parsed, or whose structure netplan would refuse (a document
    or ``network`` that is not a mapping, one of those keys not a mapping), is moved
    aside too: netplan refuses the whole config with it in place, so it configures
    nothing now, and left there it would fail our generate and roll us back to the
    DHCP the image does not even get. It is kept in the backup like any other."""
    try:
        doc = yaml.safe_load(text)
    except Exception:  # any PyYAML error, and a RecursionError on deep nesting
        return True
    if doc is None:
        return False
    if not isinstance(doc, dict):
        return True
    network = doc.get("network")
    if network is None:
        return False
    if not isinstance(network, dict):
        return True
    for key in NETPLAN_NIC_KEYS:
        value = network.get(key)
        if value is not None and (value or not isinstance(value, dict)):
            return True
    return False


def netplan_aside(root: str, manifest: Manifest) -> "list[str]":
    """The image's own netplan files that define NICs (a cloud image's DHCP YAML, e.g.
    50-cloud-init.yaml): netplan merges every file, so a ``dhcp4: true`` of theirs
    would stay on our NIC. Judged by parsing each (netplan_defines_nics), not by
    searching its text: a key may be written escaped ("\\x65thernets") and a comment
    may mention one. Ours are left out; so is what is not a regular file (read
    non-blocking: a FIFO cannot hang the agent here)."""
    ours = set(e.path for e in manifest.entries)
    try:
        names = sorted(posix.listdir(join(root, NETPLAN_DIR)))
    except FileNotFoundError:
        return []
    aside = []
    yaml = None
    for name in names:
        rel = NETPLAN_DIR + name
        if rel in ours or not name.endswith(".yaml") or not is_plain_name(name):
            continue
        try:
            text = read_small(join(root, rel), MAX_FILE)
        except OSError:
            continue
        if yaml is None:
            yaml = _load_yaml()
        if netplan_defines_nics(yaml, text):
            aside.append(rel)
    return aside


def netplan_generate(root: str, log: Log, timeout: "float | None" = None) -> None:
    """Run netplan's generator (the C binary ``netplan generate`` runs; not the Python
    CLI, whose start costs ~0.7 s on an emulated boot) so /run holds the backend config
    of the files now in /etc/netplan, as cloud-init does. Called so, the generator also
    reloads udev's rules and, during boot, asks systemd to start networkd "just in time"
    (a few ``systemctl`` runs). Called as the systemd generator instead it would skip
    those but also find its stamp from boot and generate nothing: not worth a trick
    whose gain is process starts under emulation. Nothing to do where
    netplan-configure.service (netplan >= 1.2) generates after us.

    Bounded: after ``timeout`` seconds (NETPLAN_TIMEOUT) the generator and whatever it
    started are killed and this is an AgentError like a failed run (the caller rolls
    back), not a boot held until systemd gives up on the unit."""
    if any(exists(join(root, u)) for u in NETPLAN_CONFIGURE_UNITS):
        log("netplan >= 1.2: netplan-configure.service generates after this unit")
        return
    binary = next((join(root, g) for g in NETPLAN_GENERATORS if exists(join(root, g))),
                  None)
    if binary is None:
        raise AgentError("netplan's generator is not installed (%s)"
                         % " or ".join("/" + g for g in NETPLAN_GENERATORS))
    argv = [binary] if root in ("", "/") else [binary, "--root-dir", root]
    limit = NETPLAN_TIMEOUT if timeout is None else timeout
    pid = posix.fork()
    if pid == 0:  # the child: exec the generator, never return into the agent
        try:
            posix.setpgid(0, 0)  # its own group: what it starts goes with it on a timeout
            posix.execv(binary, argv)
        finally:
            posix._exit(127)
    try:
        posix.setpgid(pid, pid)  # (also here: whichever runs first)
    except OSError:
        pass
    code = wait_bounded(pid, limit)
    if code is None:
        raise AgentError("netplan generate did not finish within %.1f s: killed it" % limit)
    if code != 0:
        raise AgentError("netplan generate failed (exit %d)" % code)
    log("ran netplan generate (%s)" % binary)


def wait_bounded(pid: int, limit: float) -> "int | None":
    """The exit code of child ``pid`` (its process group leader), or None when it has not
    ended within ``limit`` seconds: then its group is killed and it is reaped. Polls
    (1 ms, doubling to 10 ms: at most that late) rather than blocking in waitpid, which
    nothing could interrupt."""
    import time

    deadline = time.monotonic() + limit
    pause = 0.001
    while True:
        done, status = posix.waitpid(pid, posix.WNOHANG)
        if done:
            return posix.waitstatus_to_exitcode(status) \
                if hasattr(posix, "waitstatus_to_exitcode") else status >> 8
        if time.monotonic() >= deadline:
            break
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
    for kill, target in ((posix.killpg, pid), (posix.kill, pid)):
        try:
            kill(target, SIGKILL)
        except OSError:
            pass
    posix.waitpid(pid, 0)
    return None


def write_announce(root: str, manifest: Manifest) -> int:
    """Leave the manifest's static IPv4 addresses for netinject-announce.service:
    'NIC ADDRESS' lines in /run (gone on the next boot, so later boots announce none)."""
    if not manifest.announce:
        return 0
    write_atomic(root, ANNOUNCE_FILE, "".join(
        "%s %s\n" % pair for pair in manifest.announce).encode("ascii"), 0o644)
    return len(manifest.announce)


ANNOUNCE_COUNT = 3  # as ifupdown's file does (arping -U -c 3), and NetworkManager
ANNOUNCE_WAIT = 60.0  # seconds to wait for networkd to bring an address up


def _local_ipv4(root: str) -> "set[str]":
    """The IPv4 addresses assigned to this host's NICs (the kernel's local table)."""
    try:
        text = read_small(join(root, "proc/net/fib_trie"), 1 << 20).decode("ascii",
                                                                            "replace")
    except OSError:
        return set()
    found = set()
    last = ""
    for line in text.splitlines():
        word = line.strip().split(" ")
        if word[0] in ("|--", "+--") and len(word) > 1:
            last = word[1].split("/")[0]
        elif line.strip() == "/32 host LOCAL":
            found.add(last)
    return found


def garp_frame(mac: str, address: str) -> bytes:
    """A gratuitous ARP request: sender and target are the address, to broadcast."""
    hw = bytes(int(b, 16) for b in mac.split(":"))
    ip = bytes(int(b) for b in address.split("."))
    return (b"\xff" * 6 + hw + b"\x08\x06"  # Ethernet: broadcast, from us, ARP
            + b"\x00\x01\x08\x00\x06\x04\x00\x01"  # Ethernet/IPv4, request
            + hw + ip + b"\x00" * 6 + ip)


def announce(root: str, log: Log, wait: float = ANNOUNCE_WAIT, interval: float = 1.0
             ) -> int:
    """``netinject-guest announce``: for each line of /run/netinject/announce, once the
    address is up, send ANNOUNCE_COUNT gratuitous ARPs a second apart. Returns how many
    addresses were announced."""
    import time

    try:
        raw = read_small(join(root, ANNOUNCE_FILE)).decode("ascii")
    except (OSError, UnicodeError):
        return 0
    pending = []
    for line in raw.splitlines():
        fields = line.split(" ")
        if len(fields) == 2 and is_nic_name(fields[0]) and is_ipv4(fields[1]):
            pending.append((fields[0], fields[1]))
    import _socket

    deadline = time.monotonic() + wait
    sent: dict[tuple[str, str], int] = {}
    while pending and time.monotonic() < deadline:
        up = _local_ipv4(root)
        for nic, address in list(pending):
            if address not in up:
                continue
            try:
                mac = read_small(join(root, "sys/class/net", nic, "address")).decode(
                    "ascii").strip()
                sock = _socket.socket(_socket.AF_PACKET, _socket.SOCK_RAW)
                try:
                    sock.bind((nic, 0x0806))
                    sock.send(garp_frame(mac, address))
                finally:
                    sock.close()
            except (OSError, ValueError, UnicodeError) as exc:
                log("announce %s on %s failed: %s" % (address, nic, exc))
                pending.remove((nic, address))
                continue
            sent[(nic, address)] = sent.get((nic, address), 0) + 1
            if sent[(nic, address)] >= ANNOUNCE_COUNT:
                log("announced %s on %s (%d gratuitous ARPs)" % (address, nic,
                                                                 ANNOUNCE_COUNT))
                pending.remove((nic, address))
        time.sleep(interval if sent else 0.05)
    for nic, address in pending:
        log("%s on %s did not come up within %.0f s: not announced" % (address, nic, wait))
    return sum(1 for n in sent.values() if n >= ANNOUNCE_COUNT)
