"""ARP prober: asks "who has GUEST_IP?" every 50 ms on a link and reports, as JSON lines
with CLOCK_MONOTONIC times, the first answer and the first gratuitous ARP from the guest.

Runs inside the harness's network namespace (``ip netns exec NS python -m
netinject.vm.prober ...``); monotonic time is shared with the harness, so times compare.
Standard library only; raw AF_PACKET socket, needs CAP_NET_RAW (root).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import select
import socket
import struct
import sys
import time
from pathlib import Path

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def _mac(iface: str) -> bytes:
    text = Path(f"/sys/class/net/{iface}/address").read_text().strip()
    return bytes(int(x, 16) for x in text.split(":"))


def arp_request(src_mac: bytes, src_ip: bytes, target_ip: bytes) -> bytes:
    eth = BROADCAST + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, src_mac, src_ip, b"\0" * 6,
                      target_ip)
    return eth + arp


def parse_arp(frame: bytes) -> tuple[int, bytes, bytes, bytes] | None:
    """(op, sender mac, sender ip, target ip) of an ARP frame, else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    _htype, _ptype, _hlen, _plen, op, smac, sip, _tmac, tip = struct.unpack(
        "!HHBBH6s4s6s4s", frame[14:42])
    return op, smac, sip, tip


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def probe(iface: str, target: str, source: str, interval: float, timeout: float,
          linger: float, every: bool = False) -> int:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind((iface, ETH_P_ARP))
    src_mac = _mac(iface)
    tip = ipaddress.IPv4Address(target).packed
    sip = ipaddress.IPv4Address(source).packed
    request = arp_request(src_mac, sip, tip)
    emit("ready")
    deadline = time.monotonic() + timeout
    next_send = 0.0
    answered_at: float | None = None
    garp_seen = False
    while True:
        now = time.monotonic()
        if now >= deadline or (answered_at is not None and not every and
                               (garp_seen or now >= answered_at + linger)):
            break
        if (answered_at is None or every) and now >= next_send:
            with contextlib.suppress(OSError):  # no carrier yet: try again next tick
                sock.send(request)
            next_send = now + interval
        wait = max(0.0, min(next_send, deadline) - time.monotonic())
        ready, _, _ = select.select([sock], [], [],
                                    wait if answered_at is None or every else 0.05)
        if not ready:
            continue
        frame = sock.recv(2048)
        arp = parse_arp(frame)
        if arp is None:
            continue
        op, smac, sender_ip, target_ip = arp
        if sender_ip != tip:
            continue
        mac = ":".join(f"{b:02x}" for b in smac)
        if target_ip == tip or (op == 2 and target_ip != sip):
            if not garp_seen:
                emit("garp", mac=mac, op=op)
                garp_seen = True
        elif op == 2 and (answered_at is None or every):
            emit("reply", mac=mac)
            answered_at = answered_at or time.monotonic()
    if answered_at is None:
        emit("timeout")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m netinject.vm.prober", description=__doc__)
    p.add_argument("--iface", required=True)
    p.add_argument("--target", required=True, help="the guest's IPv4 address")
    p.add_argument("--source", required=True, help="our IPv4 address on the link")
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--linger", type=float, default=3.0,
                   help="after the answer, keep listening this long for a gratuitous ARP")
    p.add_argument("--every", action="store_true",
                   help="keep asking until --timeout and report every answer (how long a "
                        "NIC went silent)")
    a = p.parse_args(argv)
    return probe(a.iface, a.target, a.source, a.interval, a.timeout, a.linger, a.every)


if __name__ == "__main__":
    sys.exit(main())
