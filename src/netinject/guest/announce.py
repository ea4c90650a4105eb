"""Gratuitous ARP for stacks that send none (systemd-networkd, netplan on networkd).

On an instance's first boot the agent leaves the static IPv4 addresses in
/run/netinject/announce (gone on the next boot, so later boots announce none), and
netinject-announce.service (after networkd; skipped when the file is absent) sends
ANNOUNCE_COUNT gratuitous ARPs for each once it is up, from an ``AF_PACKET`` socket (no
arping needed), without holding the address back as networkd's
DuplicateAddressDetection=ipv4 would (~6 s).
"""

from .contract import AgentError, Manifest, is_ipv4, is_nic_name
from .install import write_atomic
from .log import Log
from .paths import join, read_small
from .proc import run_command, tool
from .stacks import Changes

ANNOUNCE_FILE = "run/netinject/announce"


def write_announce(root: str, manifest: Manifest,
                   only: "list[str] | None" = None) -> int:
    """Leave the manifest's static IPv4 addresses (of the NICs in ``only``, else all)
    for netinject-announce.service: 'NIC ADDRESS' lines in /run (gone on the next boot,
    so later boots announce none)."""
    pairs = [p for p in manifest.announce if only is None or p[0] in only]
    if not pairs:
        return 0
    write_atomic(root, ANNOUNCE_FILE, "".join(
        "%s %s\n" % pair for pair in pairs).encode("ascii"), 0o644)
    return len(pairs)


ANNOUNCE_UNIT = "netinject-announce.service"


def announce_later(root: str, manifest: Manifest, changes: Changes, log: Log) -> None:
    """After a live change on a stack that sends no gratuitous ARP: the changed and added
    NICs' static IPv4 addresses announced once they are up (a hot-plugged NIC: when it
    appears), by netinject-announce.service, started without waiting for it."""
    try:
        if not write_announce(root, manifest, changes.changed + changes.added):
            return
        systemctl = tool("systemctl", root)
        if systemctl is None:
            raise AgentError("no systemctl")
        run_command([systemctl, "--no-block", "start", ANNOUNCE_UNIT], 15,
                    "systemctl start " + ANNOUNCE_UNIT)
        log("%s started for %s" % (ANNOUNCE_UNIT, changes))
    except (OSError, AgentError) as exc:  # the change is in place: go on
        log("could not announce the changed addresses: %s" % exc)


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
