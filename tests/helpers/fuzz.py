"""The fuzz suite: hostile host inputs, drives, image trees, output paths and requests to
the vendordata service, with strict oracles.

Seven categories, each seeded (the same seed gives the same inputs):

* ``neutron`` and ``network-data``: structural mutations of the golden documents in
  tests/cases (keys deleted or set to null, wrong types, hostile strings: zone ids,
  newlines, shell text, non-ASCII look-alikes, huge numbers, deep nesting, duplicates).
  Every input goes through the real CLI (``render --out`` into a fresh directory, in
  process). Oracle: exit 0 with every rendered file whole, or exit 2 with a message that
  names a field and nothing written; never a traceback (any other exception or exit
  status). Every file of an exit 0 is checked line by line against a strict grammar
  (ENI, udev rules, resolv.conf, hostname), and the drive's manifest and JSON are checked
  too: a line outside the grammar is an injection.
* ``drive``: real drives (vfat and iso9660) built by netinject, then damaged: bit flips,
  truncation, FAT loops, ISO extents and sizes. The agent's own reader and manifest
  check run on each. Oracle: it raises AgentError or returns exactly the original
  payload (the manifest's hashes cannot be fooled by a damaged copy); no other
  exception, no hang (each input runs under a 5 s alarm); and the subset installed by
  ``run`` on a guest-shaped tree installs only the original files.
* ``image-tree``: ``netinject-guest install`` and ``uninstall`` on hostile image trees
  (symlinks out of the image at every directory the installer touches, climbing,
  looping and dangling links, FIFOs and devices where files are expected, odd modes;
  tests/helpers/fuzz_image.py). Oracle: nothing outside the image is created, modified
  or deleted; exit 0, or 2 with a message; no traceback, no hang.
* ``output-paths`` (tests/helpers/fuzz_outputs.py): valid inputs, hostile output paths
  for ``render --out``, ``--system-metadata-out`` and ``drive --out`` (FIFOs, devices,
  sockets, symlinks out of the tree at every level, dangling links, directories where
  files go, read-only directories, the input as the output). Oracle: exit 0 with every
  output a regular file with the golden bytes in its intended place and nothing else
  changed, or exit 2/1 with a message and nothing changed anywhere; the exit status the
  hazard calls for (``wrong verdicts``); never a traceback or a hang.
* ``vendordata``: hostile requests to the vendordata service, in process (the WSGI app
  around a real service whose cloud is a stand-in) and over loopback (the real
  ``netinject vendordata serve``, with and without auth), slow clients included. Oracle:
  every answer a well-formed HTTP response with a status in the documented set, never
  500, a bounded JSON body naming no cloud URL; no hang; no traceback in the log. See
  tests/helpers/fuzz_vendordata.py.

Run: ``.venv/bin/python tests/helpers/fuzz.py --inputs 50000`` (figures per category; exit 1 on
any finding; ``--category NAME`` runs one with all the inputs). The test suite runs a
bounded sample (tests/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import ipaddress
import json
import random
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CASES = HERE.parent / "cases"
# Run as a script, this directory would come first on sys.path, and its modules would
# shadow packages of the same name (helpers/openstack.py: openstacksdk).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent.parent / "src"))
sys.path.insert(1, str(HERE.parent))  # helpers.* when run as a script

from helpers import iso  # noqa: E402
from helpers.fuzz_image import image_fuzz  # noqa: E402
from helpers.fuzz_outputs import output_paths_fuzz  # noqa: E402
from netinject import drive  # noqa: E402
from netinject.cli import main  # noqa: E402
from netinject.guest import contract, discovery, run  # noqa: E402
from netinject.render import Options, Style  # noqa: E402
from netinject.sources import network_data  # noqa: E402
from netinject.sources.neutron import parse_document  # noqa: E402

# -- hostile values ------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "", " ", "\n", "x\ny", "fe80::1%eth0", "fe80::1%$(touch /tmp/x)", "fe80::%1/64",
    "10.0.0.1\n", "10.0.0.0/8\n", "10.0.0.1; reboot", "$(id)", "`id`", "a\"b", "a'b",
    "\u212a", "web-\u212a", "\uff11\uff10.0.0.1", "10.0.0.\u0661", "\x00", "\x1b[2J",
    "fa:16:3e:00:00:01\n", "FA:16:3E:00:00:01", "fa:16:3e:00:00:0g", "::", "::1",
    "0.0.0.0/0", "::/0", "255.255.255.255", "224.0.0.1", "1" * 5000, "a" * 300,
    "ffff:ffff:ffff::%x", "1.2.3.4/33", "2001:db8::/129", "true", "null", "-1",
    "eth0", "../../etc/passwd", "etc/shadow", "%", "/", "0x10", "１２",
    "{'a': {1, [2]}}", "{[1]: '0'}", "{'p': '99999999999'}", "{" * 2000,
]
SUFFIXES = ["\n", "%eth0", "%$(touch /tmp/x)", "\u212a", " ", ";id", "\x00", "\r", "/8",
            "%25", "\u0661"]


class RawText(str):
    """A document given as raw text (not JSON-encodable as a value: too deep, too long)."""


RAW_DOCS = [RawText("null"), RawText("[" * 100_000 + "]" * 100_000), RawText("9" * 5000),
            RawText('{"instance": ' + "9" * 4301 + "}"), RawText("{"), RawText("\ud800"),
            RawText('{"a": 1, "a": 2}'), RawText("[]"), RawText('""')]
HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1 << 64, 2 ** 200, 1.5,
    float("inf"), [], {}, [None], {"a": None}, "x",
]


def hostile(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.55:
        return rng.choice(HOSTILE_STRINGS)
    if roll < 0.85:
        return rng.choice(HOSTILE_VALUES)
    depth = rng.randint(1, 60)
    value: Any = "x"
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


def mutate(doc: Any, rng: random.Random) -> Any:
    """One to four structural mutations of a copy of ``doc`` (now and then the whole
    document replaced by hostile text)."""
    if rng.random() < 0.03:
        return rng.choice(RAW_DOCS)
    out = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.45:
            leaves = [p for p in _paths(out) if p and isinstance(_get(out, p), str)]
            if leaves:
                path = rng.choice(leaves)
                parent = _get(out, path[:-1])
                value = parent[path[-1]]
                parent[path[-1]] = (value + rng.choice(SUFFIXES) if rng.random() < 0.7
                                    else rng.choice(HOSTILE_STRINGS))
                continue
        paths = [p for p in _paths(out) if p]
        if not paths:
            return hostile(rng)
        path = rng.choice(paths)
        parent = _get(out, path[:-1])
        key = path[-1]
        op = rng.random()
        if op < 0.45:
            parent[key] = hostile(rng)
        elif op < 0.6:
            if isinstance(parent, dict):
                del parent[key]
            else:
                parent.pop(key)
        elif op < 0.7 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))  # a duplicate
        elif op < 0.8:
            # A value from elsewhere in the document (ids swapped, an IP where a CIDR is).
            other = _get(out, rng.choice(paths))
            parent[key] = copy.deepcopy(other)
        elif op < 0.9 and isinstance(parent[key], str):
            s = parent[key]
            at = rng.randint(0, len(s))
            parent[key] = s[:at] + rng.choice(["%", "\n", " ", ";", "$(x)", "\u212a", "::",
                                               "/", "0", "f"]) + s[at:]
        elif isinstance(parent, dict):
            parent[rng.choice(["zzz", "gateway_ip", "mtu", "host_routes"])] = hostile(rng)
    return out


# -- grammar oracles -----------------------------------------------------------------------

IP = r"[0-9a-f.:]{2,39}"
NIC = r"eth[0-9]{1,4}"
INDENT = " " * 8
ENI_LINES = [re.compile(p, re.ASCII) for p in (
    r"", r"# The loopback network interface", r"auto lo", r"iface lo inet loopback",
    rf"auto {NIC}", rf"allow-hotplug {NIC}",
    rf"iface {NIC} inet6? (static|dhcp|auto|manual)",
    rf"{INDENT}address (?P<ip>{IP})", rf"{INDENT}netmask ([0-9.]{{7,15}}|[0-9]{{1,3}})",
    rf"{INDENT}broadcast (?P<ip>{IP})", rf"{INDENT}gateway (?P<ip>{IP})",
    rf"{INDENT}mtu [0-9]{{2,5}}", rf"{INDENT}dhcp 1",
    rf"{INDENT}dns-nameservers {IP}( {IP})*",
    rf"{INDENT}pre-up echo 1 > /proc/sys/net/ipv4/conf/{NIC}/arp_notify \|\| true",
    rf"{INDENT}post-up /usr/bin/arping -q -U -c 3 -I {NIC} (?P<ip>{IP}) >/dev/null 2>&1 &",
    rf"{INDENT}post-up arping -A -U -I {NIC} -c 120 (?P<ip>{IP}) &",
    rf"{INDENT}pre-up ip link set dev {NIC} mtu [0-9]{{2,5}}",
    rf"{INDENT}(up|down) ip (-6 )?route (add|del) (?P<net>{IP}/[0-9]{{1,3}}) via "
    rf"(?P<ip>{IP}) dev {NIC}",
    rf"{INDENT}(up|down) route (add|del) -net (?P<ip>{IP}) netmask [0-9.]{{7,15}} "
    rf"gateway {IP} dev {NIC}",
    rf"{INDENT}(up|down) route -A inet6 (add|del) (?P<net>{IP}/[0-9]{{1,3}}) gw {IP} "
    rf"dev {NIC}",
)]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
MAC = r"[0-9a-f]{2}(:[0-9a-f]{2}){5}"
UDEV_LINES = [re.compile(p, re.ASCII) for p in (
    r"", r"# This file was generated by netinject: it pins each NIC's name to its MAC\.",
    r"# NIC indices come from the instance's ports_pattern \(port id -> index\)\.",
    rf"# {NIC}(: port {UUID})?",
    rf'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="\?\*", ATTR\{{address\}}=="{MAC}", '
    rf'ATTR\{{dev_id\}}=="0x0", ATTR\{{type\}}=="1", KERNEL=="eth\*", NAME="{NIC}"',
)]
RESOLV_LINES = [re.compile(p, re.ASCII) for p in (
    r"# Generated by netinject from the instance's subnets\.",
    r"# glibc reads at most 3 nameserver lines \(MAXNS\): the ones below are ignored by it\.",
    rf"nameserver (?P<ip>{IP})",
)]
HOSTNAME_LINES = [re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)]
MANIFEST_LINES = [re.compile(p, re.ASCII) for p in (
    r"netinject-manifest 3", r"generator netinject [0-9.]+", r"style (default|seed)",
    rf"instance {UUID}",
    r"file (etc/network/interfaces|etc/resolv\.conf|etc/hostname|"
    r"etc/udev/rules\.d/70-persistent-net\.rules|"
    rf"etc/systemd/network/10-netinject-{NIC}\.(network|link)|"
    rf"etc/systemd/network/10-netplan-{NIC}\.network\.d/90-netinject\.conf) "
    r"[A-Za-z0-9._-]{1,40} 0644 [0-9a-f]{64}",
    r"file (etc/netplan/90-netinject\.yaml|"
    rf"etc/NetworkManager/system-connections/netinject-{NIC}\.nmconnection) "
    r"[A-Za-z0-9._-]{1,40} 0600 [0-9a-f]{64}",
    rf"nic {NIC} {MAC}",
    rf"announce {NIC} (?P<ip>[0-9.]{{7,15}})",
    rf"mtu {NIC} [0-9]{{2,5}}",
    rf"addr {NIC} ((?P<ip>{IP})/[0-9]{{1,3}}|dhcp4|dhcp6|slaac|dhcpv6-stateless)",
    rf"route {NIC} (?P<net>{IP}/[0-9]{{1,3}}) {IP}",
    rf"dns {NIC} (?P<ip>{IP})",
)]
PORT = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,254}"
GENERATED = r"# Generated by netinject from the instance's Neutron ports \(do not edit\)\."
PREFIX = r"/[0-9]{1,3}"
NETWORKD_LINES = [re.compile(p, re.ASCII) for p in (
    r"", GENERATED, rf"# {NIC}(: port {PORT})?", r"\[(Match|Link|Network|Address|Route)\]",
    rf"MACAddress={MAC}", rf"Name={NIC}", r"MTUBytes=[0-9]{2,5}",
    r"RequiredForOnline=(yes|no)", r"DHCP=(yes|no|ipv4|ipv6)", r"IPv6AcceptRA=(yes|no)",
    r"LinkLocalAddressing=no", r"ConfigureWithoutCarrier=yes", rf"DNS=(?P<ip>{IP})",
    rf"Address=(?P<ip>{IP}){PREFIX}",
    rf"Gateway=(?P<ip>{IP})", rf"Destination=(?P<net>{IP}{PREFIX})",
)]
NETPLAN_LINES = [re.compile(p, re.ASCII) for p in (
    GENERATED, r"network:", r"  version: 2", r"  ethernets:", rf"    {NIC}:",
    rf"      # {NIC}(: port {PORT})?", r"      match:", rf'        macaddress: "{MAC}"',
    rf'      set-name: "{NIC}"', r"      mtu: [0-9]{2,5}", r"      dhcp[46]: (true|false)",
    r"      accept-ra: (true|false)", r"      ipv6-address-generation: eui64",
    r"      (addresses|routes|nameservers):", r"        addresses:",
    rf'        - "(?P<ip>{IP}){PREFIX}"', rf'        - to: "(default|(?P<net>{IP}{PREFIX}))"',
    rf'          via: "(?P<ip>{IP})"', rf'          - "(?P<ip>{IP})"',
)]
NETPLAN_DROPIN_LINES = [re.compile(p, re.ASCII) for p in (
    GENERATED, rf"# {NIC}(: port {PORT})?", r"\[Network\]", r"ConfigureWithoutCarrier=yes",
)]
NM_LINES = [re.compile(p, re.ASCII) for p in (
    r"", GENERATED, rf"# {NIC}(: port {PORT})?", r"\[(connection|ethernet|ipv4|ipv6)\]",
    rf"id=netinject-{NIC}", rf"uuid={UUID}", r"type=ethernet", r"autoconnect-priority=100",
    r"mac-address=[0-9A-F]{2}(:[0-9A-F]{2}){5}", r"mtu=[0-9]{2,5}",
    r"method=(manual|auto|dhcp|disabled|ignore)", r"addr-gen-mode=eui64",
    rf"address[0-9]{{1,3}}=(?P<ip>{IP}){PREFIX}", rf"gateway=(?P<ip>{IP})",
    rf"route[0-9]{{1,3}}=(?P<net>{IP}{PREFIX}),{IP}", rf"dns=({IP};)+",
)]
GRAMMARS = {
    "etc/network/interfaces": ENI_LINES,
    "etc/udev/rules.d/70-persistent-net.rules": UDEV_LINES,
    "etc/resolv.conf": RESOLV_LINES,
    "etc/hostname": HOSTNAME_LINES,
    "etc/netplan/90-netinject.yaml": NETPLAN_LINES,
    "netinject/manifest": MANIFEST_LINES,
}
GRAMMAR_PATTERNS = [
    (re.compile(rf"etc/systemd/network/10-netinject-{NIC}\.(network|link)", re.ASCII),
     NETWORKD_LINES),
    (re.compile(rf"etc/NetworkManager/system-connections/netinject-{NIC}\.nmconnection",
                re.ASCII), NM_LINES),
    (re.compile(rf"etc/systemd/network/10-netplan-{NIC}\.network\.d/90-netinject\.conf",
                re.ASCII), NETPLAN_DROPIN_LINES),
]


def grammar(name: str) -> list[re.Pattern[str]]:
    """The line grammar of a rendered file (KeyError: a file no renderer should make)."""
    if name in GRAMMARS:
        return GRAMMARS[name]
    for pattern, lines in GRAMMAR_PATTERNS:
        if pattern.fullmatch(name):
            return lines
    raise KeyError(name)


def _typed_ok(m: re.Match[str]) -> bool:
    """Tokens named ip/net must parse as addresses/networks without a zone id."""
    groups = m.groupdict()
    try:
        if groups.get("ip"):
            ipaddress.ip_address(groups["ip"])
        if groups.get("net"):
            ipaddress.ip_network(groups["net"])
    except ValueError:
        return False
    return True


def check_file(name: str, text: str) -> list[str]:
    """Lines of a rendered file outside its grammar (an empty list: all good)."""
    if not text.endswith("\n"):
        return [f"{name}: no final newline"]
    bad = []
    for n, line in enumerate(text[:-1].split("\n"), 1):
        ok = False
        for pattern in grammar(name):
            m = pattern.fullmatch(line)
            if m is not None and _typed_ok(m):
                ok = True
                break
        if not ok:
            bad.append(f"{name}:{n}: {line!r}")
    return bad


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,254}", re.ASCII)
_ND_TYPES = {"ipv4", "ipv6", "ipv4_dhcp", "ipv6_dhcpv6-stateful", "ipv6_slaac",
             "ipv6_dhcpv6-stateless"}


def _ip_ok(text: Any) -> bool:
    if not isinstance(text, str) or not re.fullmatch(IP, text, re.ASCII):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_drive_json(files: dict[str, bytes]) -> list[str]:
    """The drive's network_data.json and meta_data.json: every value of its type."""
    bad: list[str] = []
    nd = json.loads(files["openstack/latest/network_data.json"])
    md = json.loads(files["openstack/latest/meta_data.json"])
    if not re.fullmatch(UUID, md["uuid"]):
        bad.append(f"meta_data.uuid {md['uuid']!r}")
    hn = md["hostname"]
    if hn is not None and not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", hn, re.ASCII):
        bad.append(f"meta_data.hostname {hn!r}")
    for key in ("name", "availability_zone"):
        v = md[key]
        if v is not None and (not isinstance(v, str) or not v.isprintable() or len(v) > 255):
            bad.append(f"meta_data.{key} {v!r}")
    for link in nd["links"]:
        if not _ID.fullmatch(link["id"]) or not re.fullmatch(MAC, link["ethernet_mac_address"]):
            bad.append(f"link {link!r}")
        if link["vif_id"] is not None and not re.fullmatch(UUID, link["vif_id"]):
            bad.append(f"link vif_id {link['vif_id']!r}")
        if link["mtu"] is not None and not (isinstance(link["mtu"], int)
                                            and 68 <= link["mtu"] <= 65535):
            bad.append(f"link mtu {link['mtu']!r}")
    for net in nd["networks"]:
        if net["type"] not in _ND_TYPES or not _ID.fullmatch(net["link"]) \
                or not _ID.fullmatch(net["network_id"]):
            bad.append(f"network {net!r}")
        for key in ("ip_address", "netmask"):
            if key in net and not _ip_ok(net[key]):
                bad.append(f"network {key} {net[key]!r}")
        for r in net.get("routes", []):
            if not all(_ip_ok(r[k]) for k in ("network", "netmask", "gateway")):
                bad.append(f"route {r!r}")
        for svc in net.get("services", []):
            if not _ip_ok(svc["address"]):
                bad.append(f"service {svc!r}")
    for svc in nd["services"]:
        if not _ip_ok(svc["address"]):
            bad.append(f"service {svc!r}")
    return bad


# -- running one host input ----------------------------------------------------------------


@dataclass
class Tally:
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    tracebacks: int = 0
    partial_writes: int = 0
    injections: int = 0
    escapes: int = 0  # (image-tree: a change outside the image)
    wrong_verdicts: int = 0  # output-paths: not the exit status the planted hazard calls for
    violations: int = 0  # vendordata: an answer or log outside the oracle
    findings: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # e.g. answers by status

    def finding(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.findings) < 20:
            self.findings.append(f"{kind}: {text}")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_host_input(doc: Any, form: str, work: Path, tally: Tally, n: int) -> None:
    tally.inputs += 1
    case = work / f"in{n}"
    case.mkdir()
    src = case / "input.json"
    if isinstance(doc, RawText):
        text = str(doc)
    else:
        try:
            text = json.dumps(doc)
        except (ValueError, RecursionError):
            text = "[" * 100000
    src.write_text(text, errors="surrogatepass")
    out = case / "out"
    args = (["render", str(src)] if form == "neutron"
            else ["render", "--network-data", str(src)]) + ["--out", str(out)]
    stderr = io.StringIO()
    style = random.Random(n).choice(["default", "seed"])
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            rc = main([*args, "--style", style])
    except BaseException as exc:
        tally.finding("tracebacks", f"{form} input {n}: {type(exc).__name__}: {exc}"[:300])
        return
    written = _files(out) if out.exists() else {}
    if rc == 2:
        tally.refused += 1
        if written:
            tally.finding("partial_writes", f"{form} input {n}: exit 2 but wrote "
                                            f"{sorted(written)}")
        if "error(s)" not in stderr.getvalue() and "netinject:" not in stderr.getvalue():
            tally.finding("tracebacks", f"{form} input {n}: exit 2 without a message")
        return
    if rc != 0:
        tally.finding("tracebacks", f"{form} input {n}: exit {rc}: {stderr.getvalue()[:200]}")
        return
    tally.accepted += 1
    bad: list[str] = []
    for name, data in written.items():
        bad += check_file(name, data.decode("utf-8", "replace"))
    # The drive: manifest and JSON from the same model.
    if isinstance(doc, RawText):
        return
    try:
        if form == "neutron":
            instance = parse_document(doc).instance
        else:
            from netinject.sources import network_data

            instance = network_data.parse(doc)
        contents = drive.contents(instance, Options(Style(style)))
    except BaseException as exc:
        tally.finding("tracebacks", f"{form} input {n}: drive: {type(exc).__name__}: {exc}")
        return
    files = {str(p): b for p, b in contents.files.items()}
    if "netinject/manifest" in files:
        bad += check_file("netinject/manifest", files["netinject/manifest"].decode())
    bad += check_drive_json(files)
    if bad:
        tally.finding("injections", f"{form} input {n}: {bad[:3]}")


def host_fuzz(form: str, count: int, seed: int) -> Tally:
    rng = random.Random(seed)
    if form == "neutron":
        bases = [json.loads(p.read_text()) for p in sorted(CASES.glob("*/instance.json"))]
    else:
        bases = [json.loads(p.read_text()) for p in sorted(CASES.glob("*/network_data.json"))]
        # network_data.json from every Neutron case too (as netinject writes it).
        for p in sorted(CASES.glob("*/instance.json")):
            bases.append(network_data.dump(parse_document(json.loads(p.read_text())).instance))
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="netinject-fuzz-") as tmp:
        work = Path(tmp)
        for n in range(count):
            doc = mutate(rng.choice(bases), rng)
            run_host_input(doc, form, work, tally, n)
            if n % 200 == 199:  # keep the temporary tree small
                for d in work.iterdir():
                    for f in sorted(d.rglob("*"), reverse=True):
                        f.rmdir() if f.is_dir() else f.unlink()
                    d.rmdir()
    return tally


# -- drives --------------------------------------------------------------------------------


class Hang(Exception):
    pass


def _alarm(_signum: int, _frame: object) -> None:
    raise Hang


def _original_drives(work: Path) -> list[tuple[str, bytes, dict[str, bytes]]]:
    """(format, image bytes, payload by name) for a vfat and an iso9660 drive built by
    netinject, and a stock nova's iso9660 drive (the payload in vendor_data2.json) built
    by genisoimage -J -r without nova's relaxed names: read through Rock Ridge."""
    from netinject.openstack.document import payload as vendor_answer

    out = []
    doc = json.loads((CASES / "multi-nic-reordered/instance.json").read_text())
    instance = parse_document(doc).instance
    data = drive.contents(instance, Options())
    payload = {str(p.name): b for p, b in data.files.items() if p.parts[0] == "netinject"}
    for fmt in ("vfat", "iso9660"):
        img = work / f"orig.{fmt}"
        (drive.build_vfat if fmt == "vfat" else drive.build_iso)(
            data, img, drive.volume_id(instance.uuid))
        raw = img.read_bytes()
        # Only the part the reader can touch matters; the rest of a 64 MiB vfat is zeros.
        out.append((fmt, raw[:1 << 20] if fmt == "vfat" else raw, payload))
    answer = {"netinject": vendor_answer(instance)}
    nova = iso.genisoimage(work / "orig.nova-iso", iso.nova_tree(work / "nova", answer),
                           ["-quiet", "-J", "-r", "-V", "config-2"])
    out.append(("nova-iso9660", nova.read_bytes(),
                contract.vendor_payload(json.dumps(answer).encode())))
    return out


def damage_iso_extensions(raw: bytes, rng: random.Random) -> bytes:
    """Rock Ridge and Joliet structures damaged where they are: SUSP entries (lengths,
    continuation areas pointing at themselves or out of their block, NM flags, the SP
    skip bytes, ER) and the Joliet descriptor (escape sequence, root record)."""
    data = bytearray(raw)
    found = [e for rec in iso.records(raw) for e in iso.entries(raw, rec)]
    ces = [e for e in found if e.sig == b"CE"]  # few (the root's): chosen more often
    svd = iso.joliet_descriptor(raw)
    for _ in range(rng.randint(1, 3)):
        if svd is not None and (not found or rng.random() < 0.2):
            at = svd + rng.choice([0, 88, 89, 90, 156, 156 + 2, 156 + 10, 156 + 25,
                                   156 + 32, 128])
            value = rng.choice([0, 1, 0x25, 0x2F, 0x40, 0xFF, rng.randrange(256)])
            if at in (svd + 156 + 2, svd + 156 + 10):
                data[at:at + 4] = rng.choice([0, 0xFFFFFFFF, rng.randrange(1 << 32)]
                                             ).to_bytes(4, "little")
            else:
                data[at] = value
            continue
        if not found:
            break
        e = rng.choice(ces if ces and rng.random() < 0.3 else found)
        roll = rng.random()
        if e.sig == b"CE" and roll < 0.5:
            here = (e.offset // iso.BLOCK, e.offset % iso.BLOCK, 28)
            extent, offset, size = rng.choice([
                here, (here[0], here[1], rng.choice([2049, 0xFFFFFFFF])),
                (here[0], rng.choice([2045, 0xFFFFFFFF]), 16),
                (rng.randrange(1 << 32), 0, 64)])
            data[e.offset:e.offset + 28] = iso.ce_bytes(extent, offset, size)
        elif e.sig == b"NM" and roll < 0.5:
            data[e.offset + 4] = rng.choice([1, 2, 4, 0x20, rng.randrange(256)])
        elif e.sig == b"SP" and roll < 0.5:
            data[e.offset + rng.choice([4, 5, 6])] = rng.randrange(256)
        elif e.sig == b"ER" and roll < 0.5:
            data[e.offset + rng.choice([0, 4, 5])] = rng.randrange(256)
        else:
            data[e.offset + 2] = rng.choice([0, 1, 2, 3, 4, 255, rng.randrange(256)])
    return bytes(data)


def damage(fmt: str, raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    kind = rng.random()
    hot = 256 * 1024 if fmt == "vfat" else len(data)  # where the vfat's metadata is
    if kind < 0.35:
        for _ in range(rng.randint(1, 16)):
            at = rng.randrange(min(hot, len(data)))
            data[at] ^= 1 << rng.randrange(8)
    elif kind < 0.5:
        return bytes(data[:rng.randrange(len(data))])
    elif kind < 0.75 and fmt == "vfat":
        # FAT entries: loops (pointing at themselves or back), bad and free clusters.
        bps = int.from_bytes(data[11:13], "little") or 512
        fat = int.from_bytes(data[14:16], "little") * bps
        for _ in range(rng.randint(1, 8)):
            cluster = rng.randrange(2, 64)
            value = rng.choice([cluster, max(2, cluster - 1), 0, 0xFFF7, 1, 0xFFFF,
                                rng.randrange(0x10000)])
            data[fat + cluster * 2:fat + cluster * 2 + 2] = value.to_bytes(2, "little")
    elif kind < 0.62:
        return damage_iso_extensions(raw, rng)
    elif kind < 0.75:
        # ISO directory records: extents and sizes past the end, zero, huge.
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(16 * 2048, min(len(data), 40 * 2048))
            value = rng.choice([0, 0xFFFFFFFF, len(data) // 2048 + 5, rng.randrange(1 << 32)])
            data[at:at + 4] = value.to_bytes(4, "little")
    else:
        # Boot sector / volume descriptor fields.
        region = (0, 64) if fmt == "vfat" else (32768, 32768 + 256)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(*region)
            data[at] = rng.randrange(256)
    return bytes(data)


def drive_fuzz(count: int, seed: int, run_every: int = 50) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        with tempfile.TemporaryDirectory(prefix="netinject-fuzz-drive-") as tmp:
            work = Path(tmp)
            originals = _original_drives(work)
            for n in range(count):
                fmt, raw, payload = rng.choice(originals)
                damaged = damage(fmt, raw, rng)
                img = work / "damaged.img"
                img.write_bytes(damaged)
                tally.inputs += 1
                signal.alarm(5)
                try:
                    outcome = _read_and_verify(img, fmt)
                except Hang:
                    tally.finding("tracebacks", f"drive {n} ({fmt}): hung")
                    continue
                except BaseException as exc:
                    tally.finding("tracebacks", f"drive {n} ({fmt}): {type(exc).__name__}: "
                                                f"{exc}"[:300])
                    continue
                finally:
                    signal.alarm(0)
                if outcome is None:
                    tally.refused += 1
                else:
                    tally.accepted += 1
                    want = {n: b for n, b in payload.items() if n != "manifest"}
                    got = [e.data for e in outcome.entries]
                    if sorted(got) != sorted(want.values()):
                        tally.finding("injections", f"drive {n} ({fmt}): a damaged drive "
                                                    "passed with other content")
                if n % run_every == 0:
                    _run_agent(work, img, payload, tally, n)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return tally


def _read_and_verify(img: Path, fmt: str) -> contract.Manifest | None:
    found = discovery.probe_label(str(img))
    if found is None:
        return None
    try:
        return contract.verify(discovery.read_payload(found))
    except contract.AgentError:
        return None
    finally:
        found.close()


def _run_agent(work: Path, img: Path, payload: dict[str, bytes], tally: Tally,
               n: int) -> None:
    """The whole boot service on a guest-shaped tree: whatever it installed must be
    exactly the original payload's files."""
    import shutil

    root = work / "guest"
    if root.exists():
        shutil.rmtree(root)
    for d in ("etc/network", "var/log", "var/lib", "dev", "sys/class/block/vdb",
              "sys/class/dmi/id"):
        (root / d).mkdir(parents=True)
    (root / "etc/network/interfaces").write_bytes(b"iface eth0 inet dhcp\n")
    (root / "sys/class/block/vdb/ro").write_text("1\n")
    doc = json.loads((CASES / "multi-nic-reordered/instance.json").read_text())
    (root / "sys/class/dmi/id/product_uuid").write_text(doc["instance"]["uuid"] + "\n")
    shutil.copyfile(img, root / "dev/vdb")
    signal.alarm(10)
    try:
        rc = run.run(run.RunArgs(str(root), wait=0, quiet=True))
    except BaseException as exc:
        tally.finding("tracebacks", f"agent run {n}: {type(exc).__name__}: {exc}")
        return
    finally:
        signal.alarm(0)
    if rc != 0:
        tally.finding("tracebacks", f"agent run {n}: exit {rc}")
    originals = set(payload.values())
    for p, before in (("etc/network/interfaces", b"iface eth0 inet dhcp\n"),
                      ("etc/hostname", None), ("etc/resolv.conf", None),
                      ("etc/udev/rules.d/70-persistent-net.rules", None)):
        f = root / p
        now = f.read_bytes() if f.is_file() else None
        if now != before and now not in originals:
            tally.finding("injections", f"agent run {n}: installed a foreign /{p}")


# -- image trees (tests/helpers/fuzz_image.py) ----------------------------------------------


def image_tree_fuzz(count: int, seed: int) -> Tally:
    tally = Tally()
    image_fuzz(count, seed, tally)
    return tally


# -- command line --------------------------------------------------------------------------

def vendordata_fuzz(count: int, seed: int) -> Tally:
    from helpers.fuzz_vendordata import vendordata_fuzz as run_category

    return run_category(count, seed)


CATEGORIES: dict[str, Callable[[int, int], Tally]] = {
    "neutron": lambda count, seed: host_fuzz("neutron", count, seed),
    "network-data": lambda count, seed: host_fuzz("network-data", count, seed),
    "drive": drive_fuzz,
    "image-tree": image_tree_fuzz,
    "output-paths": lambda count, seed: output_paths_fuzz(count, seed, Tally),
    "vendordata": vendordata_fuzz,
}
# Each category's share of the inputs: a damaged drive costs ~3 ms, an image tree ~20 ms,
# an output-path scenario ~25 ms, a vendordata request ~7 ms (measured on 2 cores).
SHARES = {"neutron": 0.27, "network-data": 0.2, "drive": 0.22, "image-tree": 0.11,
          "output-paths": 0.11, "vendordata": 0.09}


def run_all(total: int, seed: int, out: Any = sys.stdout,
            only: list[str] | None = None) -> dict[str, Tally]:
    """``total`` inputs over the categories by SHARES (``only``: these, sharing
    ``total`` in the same proportions)."""
    results = {}
    chosen = [n for n in CATEGORIES if not only or n in only]
    for name in chosen:
        fn = CATEGORIES[name]
        count = max(1, int(total * SHARES[name] / sum(SHARES[n] for n in chosen)))
        t0 = time.monotonic()
        results[name] = tally = fn(count, seed)
        print(f"{name:13} {tally.inputs:7} inputs  {tally.accepted:6} accepted  "
              f"{tally.refused:6} refused  tracebacks {tally.tracebacks}  partial writes "
              f"{tally.partial_writes}  injections {tally.injections}  escapes "
              f"{tally.escapes}  wrong verdicts {tally.wrong_verdicts}  violations "
              f"{tally.violations}  ({time.monotonic() - t0:.0f} s)", file=out, flush=True)
        if tally.outcomes:
            print("  " + "  ".join(f"{k} {v}" for k, v in sorted(tally.outcomes.items())),
                  file=out)
        for f in tally.findings:
            print(f"  {f}", file=out)
    return results


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="netinject's fuzz suite (see the module doc)")
    p.add_argument("--inputs", type=int, default=50_000, help="inputs in all (default 50000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--category", "--only", action="append", choices=sorted(CATEGORIES),
                   help="run this category only (repeatable; --inputs shared among them)")
    args = p.parse_args(argv)
    results = run_all(args.inputs, args.seed, only=args.category)
    bad = sum(t.tracebacks + t.partial_writes + t.injections + t.escapes + t.wrong_verdicts
              + t.violations
              for t in results.values())
    print(f"total {sum(t.inputs for t in results.values())} inputs, {bad} finding(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(cli())
