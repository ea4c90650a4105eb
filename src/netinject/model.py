"""The validated network model.

Everything here is frozen and typed with :mod:`ipaddress` values, so that a renderer
can only ever write text that was parsed first: no raw input string reaches a guest
file. Raw documents (Neutron JSON, network_data.json) are turned into these objects
by :mod:`netinject.sources`; renderers read only these objects.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Literal

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
IPInterface = IPv4Interface | IPv6Interface

MTU_MIN = 68
MTU_MAX = 65535

# fullmatch + re.ASCII everywhere: ``$`` also matches before a trailing newline, and
# IGNORECASE without ASCII lets non-ASCII letters (the Kelvin sign) match ``[a-z]``.
_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}", re.ASCII)
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)
# What an address or a network may look like before ipaddress sees it: hex digits, dots
# and colons (and one prefix). No '%': ipaddress accepts IPv6 zone ids ("fe80::1%<any
# text>") and str() gives that text back verbatim, into files that run as root.
_IP_TEXT_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}", re.ASCII)
_NET_TEXT_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}/[0-9]{1,3}", re.ASCII)


class ZoneIdError(ValueError):
    """An IPv6 address with a zone id ('%...') reached the model."""


def parse_ip(text: object) -> IPv4Address | IPv6Address:
    """An IP address from its text: ASCII digits, dots and colons only (no zone id, no
    whitespace, no newline). ValueError with a reason otherwise."""
    if not isinstance(text, str):
        raise ValueError("is not an IP address")
    if "%" in text:
        raise ZoneIdError("is an IPv6 address with a zone id ('%...'), which is not allowed")
    if not _IP_TEXT_RE.fullmatch(text):
        raise ValueError("is not an IP address")
    try:
        return ip_address(text)
    except ValueError:
        raise ValueError("is not an IP address") from None


def parse_network(text: object) -> IPv4Network | IPv6Network:
    """A network in CIDR form with no host bits set (same character rules as parse_ip)."""
    if not isinstance(text, str) or "/" not in text:
        raise ValueError("is not a CIDR (address/prefix)")
    if "%" in text:
        raise ZoneIdError("is an IPv6 network with a zone id ('%...'), which is not allowed")
    if not _NET_TEXT_RE.fullmatch(text):
        raise ValueError("is not a CIDR")
    try:
        return ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError("has host bits set" if "host bits" in str(exc)
                         else "is not a CIDR") from None


def prefix_bounds(version: int) -> tuple[int, int]:
    """The prefix lengths an address (and so a subnet) may have: 1..32 for IPv4, 1..128
    for IPv6. /0 is out: Neutron itself refuses a /0 subnet, and netplan's generator
    refuses ``address/0`` (a netplan image would then fall back to DHCP). The host
    prefixes are in: /31 and /127 are point-to-point links, /32 and /128 host routes
    with an on-link gateway, and network_data.json may carry either."""
    return 1, 32 if version == 4 else 128


def prefix_problem(prefixlen: int, version: int, what: str = "address") -> str | None:
    """Why a prefix length is out of prefix_bounds (None: it is not)."""
    lo, hi = prefix_bounds(version)
    if lo <= prefixlen <= hi:
        return None
    return f"an IPv{version} {what}'s prefix length must be {lo}..{hi}"


def check_no_zone(value: IPv4Address | IPv6Address | IPv4Network | IPv6Network
                  | IPv4Interface | IPv6Interface) -> None:
    """The model's own guard: no address, network or interface carries a zone id,
    however it was built (ZoneIdError). str() is what reaches a file, so that is what
    is checked."""
    if "%" in str(value):
        raise ZoneIdError(f"{value!s} has an IPv6 zone id")


@dataclass(frozen=True, order=True)
class MacAddress:
    """An Ethernet MAC address, normalised to lower-case ``aa:bb:cc:dd:ee:ff``."""

    value: str

    def __post_init__(self) -> None:
        if not _MAC_RE.fullmatch(self.value):
            raise ValueError(f"not a MAC address in canonical form: {self.value!r}")

    @classmethod
    def parse(cls, text: str) -> MacAddress:
        candidate = text.lower()
        if not _MAC_RE.fullmatch(candidate):
            raise ValueError("is not a MAC address (want six hex octets like fa:16:3e:00:00:01)")
        if candidate == "00:00:00:00:00:00":
            raise ValueError("is the null MAC address")
        if int(candidate[:2], 16) & 1:
            raise ValueError("is a multicast MAC address, not a NIC address")
        return cls(candidate)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Hostname:
    """An RFC 1123 host name (labels of letters, digits and hyphens; at most 253)."""

    value: str

    @classmethod
    def parse(cls, text: str) -> Hostname:
        name = text[:-1] if text.endswith(".") else text
        if not name or len(name) > 253:
            raise ValueError("is not an RFC 1123 host name (1 to 253 characters)")
        for label in name.split("."):
            if not _LABEL_RE.fullmatch(label):
                raise ValueError(
                    "is not an RFC 1123 host name (labels of 1-63 letters, digits or "
                    "hyphens, not starting or ending with a hyphen)")
        return cls(name)

    @property
    def short(self) -> str:
        return self.value.split(".", 1)[0]

    def __str__(self) -> str:
        return self.value


def unique_dns(servers: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    """Name servers de-duplicated, first occurrence wins (the order resolvers try)."""
    return tuple(dict.fromkeys(servers))


def parse_uuid(text: str) -> uuid.UUID:
    """Parse a canonical UUID (the form OpenStack uses for every id)."""
    try:
        value = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        raise ValueError("is not a UUID") from None
    if str(value) != text.lower():
        raise ValueError("is not a UUID in canonical 8-4-4-4-12 form")
    return value


class AddrMode(enum.Enum):
    """How one address of a NIC is configured in the guest."""

    STATIC = "static"
    DHCP = "dhcp"  # inet dhcp / inet6 dhcp (DHCPv6 stateful)
    SLAAC = "slaac"  # inet6 auto
    DHCPV6_STATELESS = "dhcpv6-stateless"  # inet6 auto + dhcp 1


@dataclass(frozen=True)
class Route:
    destination: IPNetwork
    gateway: IPAddress

    def __post_init__(self) -> None:
        check_no_zone(self.destination)
        check_no_zone(self.gateway)

    @property
    def version(self) -> int:
        return self.destination.version


@dataclass(frozen=True)
class IfAddress:
    """One address stanza of a NIC: an address family and how it is configured.

    For STATIC, ``interface`` is the address with its subnet's prefix; for the other
    modes it is None (the guest learns it) or the known address (kept for reference).
    """

    version: Literal[4, 6]
    mode: AddrMode
    interface: IPInterface | None
    gateway: IPAddress | None = None
    routes: tuple[Route, ...] = ()
    dns: tuple[IPAddress, ...] = ()
    subnet_id: str | None = None

    def __post_init__(self) -> None:
        for value in (self.interface, self.gateway, *self.dns):
            if value is not None:
                check_no_zone(value)
        if self.interface is not None:
            prefix = self.interface.network.prefixlen
            problem = prefix_problem(prefix, self.interface.version)
            if problem is not None:
                raise ValueError(f"{self.interface} has prefix length {prefix}: {problem}")

    @property
    def is_static(self) -> bool:
        return self.mode is AddrMode.STATIC and self.interface is not None


@dataclass(frozen=True)
class Nic:
    """One guest NIC: named ``eth<index>``, pinned to its MAC by a udev rule."""

    index: int
    mac: MacAddress
    port_id: str
    addresses: tuple[IfAddress, ...]
    mtu: int | None = None
    network_id: str | None = None

    @property
    def name(self) -> str:
        return f"eth{self.index}"


@dataclass(frozen=True)
class Instance:
    """Everything the guest needs to bring its network up without asking anyone."""

    uuid: uuid.UUID
    nics: tuple[Nic, ...]
    hostname: Hostname | None = None
    name: str | None = None
    dns: tuple[IPAddress, ...] = ()
    inject: bool = True
    availability_zone: str | None = None
    launch_index: int = 0

    def __post_init__(self) -> None:
        for server in self.dns:
            check_no_zone(server)

    def default_route(self, version: int) -> tuple[Nic, IfAddress] | None:
        """The NIC and address stanza that carry the default route of an address family.

        The one rule every output format follows: one default route per family (a second
        ``gateway`` line makes ifup fail), on the lowest-index NIC whose subnet has a
        gateway, on its first static address of that family with one.
        """
        for nic in self.nics:
            for addr in nic.addresses:
                if addr.version == version and addr.gateway is not None and addr.is_static:
                    return nic, addr
        return None

    def gateway_nic(self, version: int) -> Nic | None:
        """The NIC that carries the default route for an address family."""
        found = self.default_route(version)
        return found[0] if found else None

    def dns_nic(self) -> Nic | None:
        """The NIC whose config carries the instance's DNS servers (every format puts
        them on one NIC): the one with the IPv4 default route, else the IPv6 one, else
        the first NIC with a static address."""
        return (self.gateway_nic(4) or self.gateway_nic(6)
                or next((n for n in self.nics if any(a.is_static for a in n.addresses)),
                        None))

    def carries_default_route(self, addr: IfAddress) -> bool:
        """Whether this very stanza (identity, not equality) carries its family's default
        route."""
        found = self.default_route(addr.version)
        return found is not None and found[1] is addr
