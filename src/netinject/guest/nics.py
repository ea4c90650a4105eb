"""NIC renames: bring every NIC to the name the manifest pins to its MAC.

udev named the NICs before the injected rules existed, so on a first boot the agent
renames them itself: links down, temporary names for swaps, SIOCSIFNAME ioctls (what
``ip link set`` does, without a subprocess), all-or-nothing.
"""

import os
import struct

from .contract import AgentError
from .log import Log
from .paths import join, read_small

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFNAME = 0x8923
IFF_UP = 0x1


class Netdev:
    """Kernel NIC operations through ioctls on a socket of this network namespace
    (the same calls ``ip link set`` makes, without a subprocess)."""

    def __init__(self) -> None:
        # _socket and fcntl are built in; the socket module would import enum and
        # selectors on the boot path.
        import _socket

        self.sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)

    def close(self) -> None:
        self.sock.close()

    def _ioctl(self, req: int, name: str, payload: bytes) -> bytes:
        import fcntl

        ifr = struct.pack("16s", name.encode()) + payload.ljust(24, b"\x00")
        return fcntl.ioctl(self.sock.fileno(), req, ifr)

    def flags(self, name: str) -> int:
        return int(struct.unpack_from("H", self._ioctl(SIOCGIFFLAGS, name, b""), 16)[0])

    def set_up(self, name: str, up: bool) -> None:
        flags = self.flags(name)
        flags = (flags | IFF_UP) if up else (flags & ~IFF_UP)
        self._ioctl(SIOCSIFFLAGS, name, struct.pack("H", flags))

    def rename(self, old: str, new: str) -> None:
        self._ioctl(SIOCSIFNAME, old, struct.pack("16s", new.encode()))


def current_names(sysfs: str) -> dict[str, str]:
    """MAC -> current interface name, read from /sys/class/net."""
    out: dict[str, str] = {}
    base = join(sysfs, "class/net")
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        try:
            mac = read_small(join(base, name, "address"), 128)
        except OSError:
            continue
        out[mac.decode("ascii", "replace").strip().lower()] = name
    return out


def plan_renames(wanted: list[tuple[str, str]], current: dict[str, str]
                 ) -> list[tuple[str, str]]:
    """(old, new) pairs that bring every present NIC to its pinned name.

    Raises AgentError if a pinned name is held by a NIC the manifest does not know.
    """
    owners = {name: mac for mac, name in current.items()}
    ours = {mac for _, mac in wanted}
    moves = []
    for name, mac in wanted:
        have = current.get(mac)
        if have is None or have == name:
            continue
        holder = owners.get(name)
        if holder is not None and holder not in ours:
            raise AgentError("cannot rename %s (%s) to %s: %s is held by %s, a NIC the "
                             "manifest does not list" % (have, mac, name, name, holder))
        moves.append((have, name))
    return moves


def rename_nics(wanted: list[tuple[str, str]], sysfs: str, log: Log,
                netdev: "Netdev | None" = None) -> int:
    """Rename NICs via temporary names (so eth0 <-> eth1 swaps work); links are down
    while renamed and come back up if they were up. All-or-nothing: on error, every
    NIC gets its old name back."""
    moves = plan_renames(wanted, current_names(sysfs))
    if not moves:
        log("NIC names already match the manifest")
        return 0
    nd = netdev or Netdev()
    was_up: dict[str, bool] = {}
    renamed: list[tuple[str, str]] = []  # (from, to) applied, for rollback
    try:
        for k, (old, _new) in enumerate(moves):
            was_up[old] = bool(nd.flags(old) & IFF_UP)
            if was_up[old]:
                nd.set_up(old, False)
            tmp = "nitmp%d" % k
            nd.rename(old, tmp)
            renamed.append((old, tmp))
        for k, (old, new) in enumerate(moves):
            nd.rename("nitmp%d" % k, new)
            renamed.append(("nitmp%d" % k, new))
            log("renamed %s -> %s" % (old, new))
        for old, new in moves:
            if was_up.get(old):
                nd.set_up(new, True)
    except OSError as exc:
        for frm, to in reversed(renamed):
            try:
                nd.rename(to, frm)
            except OSError:
                pass
        for old, up in was_up.items():
            if up:
                try:
                    nd.set_up(old, True)
                except OSError:
                    pass
        raise AgentError("NIC rename failed (%s); names restored"
                         % os.strerror(exc.errno or 5)) from None
    finally:
        if netdev is None:
            nd.close()
    return len(moves)
