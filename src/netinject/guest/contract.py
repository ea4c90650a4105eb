"""The host-guest contract: everything both halves must agree on, defined once.

Standard library only, Python >= 3.9: the host imports this module (netinject.drive,
netinject.hotplug, the harness) and ``netinject guest-bundle`` joins it into the agent.
It holds the labels, the limits, the guest-path allowlist (built from the stacks'
descriptors, guest/stacks.py), the manifest's line grammar (writer and parser), the
state file, the hot-plug bundle, the outcomes and the agent's result line, and the names
a drive's files get (``iso_name``, ``fat_uuid``). Nothing here touches disk.
"""

# (The agent is one joined module at boot: sibling imports are removed by the joiner, so
# every top-level name in guest/ is unique.)

from .errors import AgentError as AgentError  # (re-exported: the host takes these
from .errors import NoPayload as NoPayload  # from the contract)
from .errors import NotOnDrive as NotOnDrive
from .paths import is_plain_name as is_plain_name
from .stacks import STACKS, Stack, stack_of

VERSION = "0.2.0"  # 0.2: live changes (manifest format 3, apply activates)
MANIFEST_FORMATS = (1, 2, 3)  # 2: files for every stack, 'announce'; 3: each NIC's facts
MANIFEST_FORMAT = MANIFEST_FORMATS[-1]
LABELS = ("config-2", "CONFIG-2")  # nova writes the label lower-case
STATE_DIR = "var/lib/netinject"
STATE_FILE = STATE_DIR + "/instance-id"
LOG_FILE = "var/log/netinject.log"
PAYLOAD_DIR = "netinject"
MANIFEST_NAME = "manifest"
MAX_FILE = 1 << 20  # bytes per payload file (and the manifest)
MANIFEST_NAMES = (MANIFEST_NAME, "MANIFEST")  # as written; as on an iso9660 primary volume
# A stock nova's own drive: the vendordata service's answer, under this key of
# openstack/latest/vendor_data2.json (see vendor_payload).
VENDOR_DIR = "openstack/latest"
VENDOR_FILE = "vendor_data2.json"
VENDOR_KEY = "netinject"
VENDOR_FORMATS = (1,)
VENDOR_MAX = 4 * MAX_FILE  # every vendordata target's answer together
MANIFEST_HEAD = 8  # the 'instance' record is among the manifest's first lines
FILE_MODE = 0o644  # the mode the host gives a payload file (a private stack's: PRIVATE_MODE)
PRIVATE_MODE = 0o600

# Guest paths the payload may write: the files every stack uses (resolver, hostname, udev
# rules naming the NICs) and each network stack's own (its descriptor's files and dirs).
# A file in an allowed directory must have a plain name and one of the suffixes its
# reader takes ("": any).
RESOLV_CONF = "etc/resolv.conf"
SHARED_FILES = (RESOLV_CONF, "etc/hostname")
SHARED_DIRS: "tuple[tuple[str, tuple[str, ...]], ...]" = (("etc/udev/rules.d/", (".rules",)),)
ALLOWED_FILES = SHARED_FILES + tuple(f for s in STACKS for f in s.files)
ALLOWED_DIRS = SHARED_DIRS + tuple(d for s in STACKS for d in s.dirs)
ALLOWED_MODES = (0o644, 0o640, 0o600, 0o444)
_HEX = frozenset("0123456789abcdef")
_HEX6 = frozenset("0123456789abcdef:")


def is_allowed_path(path: str) -> bool:
    """One of the allowlisted guest paths: no '..', no absolute path, no other place."""
    if path in ALLOWED_FILES:
        return True
    for d, suffixes in ALLOWED_DIRS:
        if path.startswith(d) and is_plain_name(path[len(d):]):
            return path.endswith(suffixes)
    return any(s.dropin(path) is not None for s in STACKS)


def is_private(path: str) -> bool:
    """Whether the file at a guest path must be root's alone (0600): its stack's are
    (NetworkManager ignores a keyfile others can read; netplan warns and may carry
    secrets). The manifest's mode and root's ownership then win over an old file's."""
    stack = stack_of(path)
    return stack is not None and stack.is_private(path)


def file_mode(path: str) -> int:
    """The mode the host gives the file at a guest path."""
    return PRIVATE_MODE if is_private(path) else FILE_MODE


def is_uuid(text: str) -> bool:
    parts = text.split("-")
    return ([len(p) for p in parts] == [8, 4, 4, 4, 12]
            and set("".join(parts)) <= _HEX)


def is_mac(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 6 and all(len(p) == 2 and set(p) <= _HEX for p in parts)


def is_nic_name(text: str) -> bool:
    return text.startswith("eth") and 3 < len(text) <= 7 and text[3:].isdigit() \
        and text[3:].isascii()


def is_ipv4(text: str) -> bool:
    """Dotted-quad IPv4, decimal, no leading zeros."""
    parts = text.split(".")
    return len(parts) == 4 and all(
        0 < len(p) <= 3 and p.isdigit() and p.isascii() and (p == "0" or p[0] != "0")
        and int(p) <= 255 for p in parts)


def sha256_hex(data: bytes) -> str:
    # The built-in module (_sha256 up to 3.11, _sha2 from 3.12) needs no OpenSSL, whose
    # loading is most of hashlib's import time; hashlib is the fallback.
    for module in ("_sha256", "_sha2", "hashlib"):
        try:
            return str(__import__(module).sha256(data).hexdigest())
        except ImportError:
            continue
    raise AgentError("no sha256 implementation in this Python")


def fat_uuid(serial: str) -> str:
    """blkid's UUID for a FAT volume serial ('3c598fc9' -> '3C59-8FC9')."""
    return "%s-%s" % (serial[:4].upper(), serial[4:8].upper())


def iso_name(name: str) -> str:
    """The primary-volume name netinject's iso9660 writer gives a file or directory."""
    return name.upper().replace("-", "_")


def lookup(payload: dict[str, bytes], name: str) -> "bytes | None":
    data = payload.get(name)
    return data if data is not None else payload.get(iso_name(name))


# -- manifest -----------------------------------------------------------------------------


class FileRecord:
    """A manifest's 'file' record: where a payload file goes, and what it must be."""

    def __init__(self, path: str, source: str, mode: int, sha256: str) -> None:
        self.path = path
        self.source = source
        self.mode = mode
        self.sha256 = sha256


class NicFacts:
    """What a manifest (format 3) says one NIC's config brings up: its MAC, MTU,
    addresses (static ones as CIDRs; 'dhcp4', 'dhcp6', 'slaac', 'dhcpv6-stateless'),
    routes (destination CIDR, gateway; the default route as 0.0.0.0/0 or ::/0) and DNS
    servers. The agent compares them across transactions to tell which NICs a change
    touches, and checks a running NIC against them."""

    def __init__(self, name: str, mac: str) -> None:
        self.name = name
        self.mac = mac
        self.mtu: int | None = None
        self.addrs: list[str] = []
        self.routes: list[tuple[str, str]] = []
        self.dns: list[str] = []

    def key(self) -> "tuple[object, ...]":
        """Everything that, changed, needs the NIC's config brought up again."""
        return (self.mac, self.mtu, tuple(self.addrs), tuple(self.routes), tuple(self.dns))

    def static(self) -> "list[str]":
        """The static addresses (CIDRs)."""
        return [a for a in self.addrs if "/" in a]

    def records(self) -> "list[str]":
        """The manifest lines that say these facts (format_manifest writes them)."""
        out = ["nic %s %s" % (self.name, self.mac)]
        if self.mtu is not None:
            out.append("mtu %s %d" % (self.name, self.mtu))
        out += ["addr %s %s" % (self.name, a) for a in self.addrs]
        out += ["route %s %s %s" % (self.name, d, g) for d, g in self.routes]
        out += ["dns %s %s" % (self.name, d) for d in self.dns]
        return out


ADDR_MODES = ("dhcp4", "dhcp6", "slaac", "dhcpv6-stateless")


class ManifestRecords:
    """A parsed manifest (grammar checked, payload not yet looked at)."""

    def __init__(self, fmt: int, uuid: str, files: "list[FileRecord]",
                 nics: "list[tuple[str, str]]", style: str, generator: str,
                 announce: "list[tuple[str, str]] | None" = None,
                 facts: "dict[str, NicFacts] | None" = None) -> None:
        self.format = fmt
        self.uuid = uuid
        self.files = files
        self.nics = nics
        self.style = style
        self.generator = generator
        self.announce = announce or []
        self.facts = facts  # None: a manifest before format 3 says nothing of them


class Entry:
    def __init__(self, path: str, data: bytes, mode: int) -> None:
        self.path = path
        self.data = data
        self.mode = mode


class Manifest:
    def __init__(self, uuid: str, entries: "list[Entry]", nics: "list[tuple[str, str]]",
                 announce: "list[tuple[str, str]] | None" = None,
                 facts: "dict[str, NicFacts] | None" = None, raw: bytes = b"") -> None:
        self.uuid = uuid
        self.entries = entries
        self.nics = nics
        # (NIC name, IPv4 address): static addresses to announce where the stack does not
        self.announce = announce or []
        self.facts = facts  # by NIC name; None before format 3
        self.raw = raw  # the manifest's text, as verified

    def for_stack(self, stack: Stack) -> "Manifest":
        """The manifest with only the files of ``stack`` and the shared ones."""
        entries = [e for e in self.entries if stack_of(e.path) in (None, stack)]
        if not any(stack_of(e.path) is stack for e in entries):
            raise AgentError("the drive carries no %s config (made by a netinject that "
                             "did not know this stack?)" % stack.name)
        return Manifest(self.uuid, entries, self.nics, self.announce, self.facts, self.raw)


def manifest_instance(raw: bytes) -> "str | None":
    """The instance uuid a manifest names (its 'instance' record), without checking the
    rest: the later-boot fast path only needs to know whether anything is new."""
    for line in raw.split(b"\n")[:MANIFEST_HEAD]:
        if line.startswith(b"instance "):
            return line[9:].decode("ascii", "replace").strip()
    return None


def parse_manifest(raw: bytes) -> ManifestRecords:
    """The manifest's records, every field checked against the grammar format_manifest
    writes; AgentError on anything else."""
    try:
        lines = raw.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise AgentError("manifest is not ASCII text") from None
    if lines and lines[-1] == "":
        lines.pop()
    head = lines[0].split(" ") if lines else []
    if len(head) != 2 or head[0] != "netinject-manifest":
        raise AgentError("manifest does not start with 'netinject-manifest <format>'")
    if not head[1].isdigit() or int(head[1]) not in MANIFEST_FORMATS:
        raise AgentError("unknown manifest format %r (this agent knows %s)"
                         % (head[1], ", ".join(map(str, MANIFEST_FORMATS))))
    uuid = None
    style = generator = ""
    files: list[FileRecord] = []
    nics: list[tuple[str, str]] = []
    announce: list[tuple[str, str]] = []
    facts: dict[str, NicFacts] = {}
    seen: set[str] = set()
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split(" ")
        key = fields[0]
        if key == "generator":
            generator = line[len("generator "):]
        elif key == "style":
            style = line[len("style "):]
        elif key.startswith("#"):
            continue
        elif key == "instance":
            if len(fields) != 2 or not is_uuid(fields[1]) or uuid is not None:
                raise AgentError("manifest line %d: bad instance record %r" % (n, line))
            uuid = fields[1]
        elif key == "file":
            if len(fields) != 5:
                raise AgentError("manifest line %d: bad file record %r" % (n, line))
            path, source, mode, digest = fields[1:]
            if not is_allowed_path(path):
                raise AgentError("manifest line %d: %r is not an allowed guest path"
                                 % (n, path))
            if path in seen:
                raise AgentError("manifest lists %r twice" % path)
            seen.add(path)
            if not is_plain_name(source) or source in MANIFEST_NAMES:
                raise AgentError("manifest line %d: source %r is not a plain file name"
                                 % (n, source))
            if not (len(mode) in (3, 4) and set(mode) <= set("01234567")) \
                    or int(mode, 8) not in ALLOWED_MODES:
                raise AgentError("manifest line %d: mode %r is not allowed" % (n, mode))
            if len(digest) != 64 or not set(digest) <= _HEX:
                raise AgentError("manifest line %d: bad sha256 %r" % (n, digest))
            files.append(FileRecord(path, source, int(mode, 8), digest))
        elif key == "nic":
            if len(fields) != 3 or not is_nic_name(fields[1]) or not is_mac(fields[2]):
                raise AgentError("manifest line %d: bad nic record %r" % (n, line))
            if any(fields[1] == a or fields[2] == b for a, b in nics):
                raise AgentError("manifest line %d: NIC name or MAC listed twice" % n)
            nics.append((fields[1], fields[2]))
        elif key == "announce":
            if len(fields) != 3 or not is_nic_name(fields[1]) or not is_ipv4(fields[2]):
                raise AgentError("manifest line %d: bad announce record %r" % (n, line))
            announce.append((fields[1], fields[2]))
        elif key in ("mtu", "addr", "route", "dns") and head[1] == "3":
            nic = facts.get(fields[1]) if len(fields) > 1 else None
            if nic is None or not _fact(nic, key, fields[2:]):
                raise AgentError("manifest line %d: bad %s record %r" % (n, key, line))
        else:
            raise AgentError("manifest line %d: unknown record %r" % (n, key))
        if key == "nic":
            facts[fields[1]] = NicFacts(fields[1], fields[2])
    if uuid is None:
        raise AgentError("manifest names no instance")
    if not files:
        raise AgentError("manifest lists no files")
    return ManifestRecords(int(head[1]), uuid, files, nics, style, generator, announce,
                           facts if head[1] == "3" else None)


def _fact(nic: NicFacts, key: str, args: "list[str]") -> bool:
    """Take one format-3 record's fields into ``nic``; False when they are not what
    format_manifest writes."""
    if key == "mtu" and len(args) == 1 and nic.mtu is None:
        if args[0].isdigit() and args[0].isascii() and 68 <= int(args[0]) <= 65535:
            nic.mtu = int(args[0])
            return True
    elif key == "addr" and len(args) == 1:  # (two SLAAC prefixes: 'slaac' twice)
        if args[0] in ADDR_MODES or is_cidr(args[0], static=True):
            nic.addrs.append(args[0])
            return True
    elif key == "route" and len(args) == 2:
        if is_cidr(args[0]) and is_ip(args[1]):
            nic.routes.append((args[0], args[1]))
            return True
    elif key == "dns" and len(args) == 1 and is_ip(args[0]) and args[0] not in nic.dns:
        nic.dns.append(args[0])
        return True
    return False


def is_ip(text: str) -> bool:
    """An IPv4 address (is_ipv4) or an IPv6 address as inet_pton reads it (hex digits and
    colons only: no zone id, no embedded IPv4 text)."""
    if is_ipv4(text):
        return True
    if not (2 <= len(text) <= 39 and set(text) <= _HEX6):
        return False
    import _socket

    try:
        _socket.inet_pton(_socket.AF_INET6, text)
    except (OSError, ValueError):
        return False
    return True


def is_cidr(text: str, static: bool = False) -> bool:
    """'address/prefix' (an interface, ``static``: prefix at least 1) or a network."""
    address, slash, prefix = text.partition("/")
    if not slash or not (prefix.isdigit() and prefix.isascii() and len(prefix) <= 3) \
            or not is_ip(address) or prefix != str(int(prefix)):
        return False
    bits = 32 if is_ipv4(address) else 128
    return (1 if static else 0) <= int(prefix) <= bits


def verify(payload: "dict[str, bytes]") -> Manifest:
    """Check the manifest and every file it lists; AgentError on anything wrong."""
    raw = lookup(payload, MANIFEST_NAME)
    if raw is None:
        raise AgentError("no netinject/manifest on the drive")
    records = parse_manifest(raw)
    entries: list[Entry] = []
    for f in records.files:
        data = lookup(payload, f.source)
        if data is None:
            raise AgentError("payload file %r (for %s) is missing" % (f.source, f.path))
        if sha256_hex(data) != f.sha256:
            raise AgentError("sha256 mismatch for %s: the drive is damaged or was "
                             "altered" % f.path)
        entries.append(Entry(f.path, data, f.mode))
    return Manifest(records.uuid, entries, records.nics, records.announce, records.facts,
                    raw)


def vendor_payload(raw: bytes) -> "dict[str, bytes]":
    """The payload files (name -> bytes, as in the netinject/ directory of netinject's
    own drive) from nova's vendor_data2.json: its ``netinject`` key holds the manifest
    and each file's text. NoPayload when the key is missing or ``{}`` (nova stores that
    when the service failed or timed out, or for an image without support_inject_ip)."""
    try:
        import json
    except ImportError:  # (Debian's python3-minimal: json is in libpython3.X-stdlib)
        raise AgentError("%s/%s needs Python's json module, which this image lacks "
                         "(Debian: install python3, not only python3-minimal)"
                         % (VENDOR_DIR, VENDOR_FILE)) from None

    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeError, ValueError):
        raise AgentError("%s/%s is not JSON" % (VENDOR_DIR, VENDOR_FILE)) from None
    if not isinstance(doc, dict):
        raise AgentError("%s/%s is not a JSON object" % (VENDOR_DIR, VENDOR_FILE))
    data = doc.get(VENDOR_KEY)
    if not data:
        raise NoPayload("%s/%s has no %r payload (nova stores {} when the service "
                        "failed, timed out, or the image lacks support_inject_ip)"
                        % (VENDOR_DIR, VENDOR_FILE, VENDOR_KEY))
    if not isinstance(data, dict) or data.get("format") not in VENDOR_FORMATS:
        raise AgentError("the %r payload has an unknown format %r (this agent reads %s)"
                         % (VENDOR_KEY, data.get("format") if isinstance(data, dict)
                            else type(data).__name__, VENDOR_FORMATS))
    manifest, files = data.get("manifest"), data.get("files")
    if not isinstance(manifest, str) or not isinstance(files, dict):
        raise AgentError("the %r payload lacks its manifest or files" % VENDOR_KEY)
    out = {MANIFEST_NAME: manifest.encode("utf-8")}
    for name, text in files.items():
        if not isinstance(name, str) or not is_plain_name(name) or name in MANIFEST_NAMES \
                or not isinstance(text, str):
            raise AgentError("the %r payload has a bad file entry %r" % (VENDOR_KEY, name))
        out[name] = text.encode("utf-8")
    for name, blob in out.items():
        if len(blob) > MAX_FILE:
            raise AgentError("payload file %r is too large (%d bytes)" % (name, len(blob)))
    return out


# -- the hot-plug bundle --------------------------------------------------------------------

BUNDLE_MAGIC = b"netinject-bundle 1\n"
BUNDLE_MAX = 8 * MAX_FILE
KEEP_SYMLINKS = (RESOLV_CONF,)
"""Paths whose symlink the agent keeps rather than replaces (first boot and apply):
resolv.conf pointing at resolvconf's or systemd-resolved's file means the image manages
DNS itself (the ENI's dns-nameservers feeds resolvconf). An apply's result names the
paths it kept (``kept=``), so the host knows per path what 'all new' means."""


def bundle(files: "list[tuple[str, bytes]]") -> bytes:
    """The stdin of ``apply``: the magic line, then per file 'file NAME SIZE\n' + bytes."""
    out = [BUNDLE_MAGIC]
    for name, data in files:
        out.append(("file %s %d\n" % (name, len(data))).encode("ascii"))
        out.append(data)
    return b"".join(out)


def parse_bundle(raw: bytes) -> "dict[str, bytes]":
    if not raw.startswith(BUNDLE_MAGIC):
        raise AgentError("not a netinject bundle")
    files: dict[str, bytes] = {}
    pos = len(BUNDLE_MAGIC)
    while pos < len(raw):
        end = raw.find(b"\n", pos, pos + 200)
        if end < 0:
            raise AgentError("bundle: bad record at byte %d" % pos)
        fields = raw[pos:end].decode("ascii", "replace").split(" ")
        if len(fields) != 3 or fields[0] != "file" or not is_plain_name(fields[1]) \
                or not fields[2].isdigit() or not fields[2].isascii() \
                or len(fields[2]) > 8 or fields[1] in files:
            raise AgentError("bundle: bad record at byte %d" % pos)
        size = int(fields[2])
        if size > MAX_FILE:
            raise AgentError("bundle: %s is too large (%d bytes)" % (fields[1], size))
        data = raw[end + 1:end + 1 + size]
        if len(data) != size:
            raise AgentError("bundle: %s is truncated" % fields[1])
        files[fields[1]] = data
        pos = end + 1 + size
    return files


def format_manifest(instance: str, style: str, generator: str,
                    files: "list[tuple[str, str, int, str]]",
                    nics: "list[tuple[str, str]]",
                    announce: "list[tuple[str, str]] | None" = None,
                    facts: "list[NicFacts] | None" = None) -> str:
    """The manifest: what the guest agent may install. One record per line, fields
    separated by one space, so the agent reads it with str.split (no JSON or regex module
    on the boot path)::

        netinject-manifest 3
        generator netinject 0.1.0
        style default
        instance <uuid>
        file <guest path> <source name> <mode> <sha256>
        nic <ethN> <mac>
        mtu <ethN> <bytes>
        addr <ethN> <address/prefix | dhcp4 | dhcp6 | slaac | dhcpv6-stateless>
        route <ethN> <destination/prefix> <gateway>
        dns <ethN> <server>
        announce <ethN> <IPv4 address>

    ``files``: (guest path, source name, mode, sha256 hex); ``nics``: (name, mac);
    ``facts``: each NIC's (NicFacts, in ``nics``' order: its nic record and the mtu,
    addr, route and dns records after it); ``announce``: the static IPv4 addresses to
    announce where the stack does not. Every field is checked here as the agent checks
    it (the text is parsed back with the agent's parser), so the host cannot write a
    manifest the agent would refuse (ValueError).
    """
    if not is_uuid(instance):
        raise ValueError("instance %r is not a lower-case UUID" % instance)
    lines = ["netinject-manifest %d" % MANIFEST_FORMAT,
             "generator %s" % generator, "style %s" % style, "instance %s" % instance]
    for path, source, mode, digest in files:
        if not is_allowed_path(path):
            raise ValueError("%r is not in the guest agent's allowlist" % path)
        if not is_plain_name(source) or source in MANIFEST_NAMES:
            raise ValueError("source name %r is not a plain file name" % source)
        if mode not in ALLOWED_MODES or len(digest) != 64 or not set(digest) <= _HEX:
            raise ValueError("bad mode or sha256 for %r" % path)
        lines.append("file %s %s %04o %s" % (path, source, mode, digest))
    by_name = {f.name: f for f in facts or []}
    for name, mac in nics:
        if not is_nic_name(name) or not is_mac(mac):
            raise ValueError("bad NIC record %r %r" % (name, mac))
        fact = by_name.get(name)
        if fact is None or fact.mac != mac:
            raise ValueError("no facts for NIC %s %s" % (name, mac))
        lines += fact.records()
    for name, address in announce or []:
        if not is_nic_name(name) or not is_ipv4(address):
            raise ValueError("bad announce record %r %r" % (name, address))
        lines.append("announce %s %s" % (name, address))
    if not is_plain_name(style) or not all(is_plain_name(w) for w in generator.split(" ")):
        raise ValueError("bad style %r or generator %r" % (style, generator))
    text = "\n".join(lines) + "\n"
    try:
        parse_manifest(text.encode("ascii"))
    except (AgentError, UnicodeError) as exc:
        raise ValueError("the agent would refuse this manifest: %s" % exc) from None
    return text


# -- the state file -------------------------------------------------------------------------
# /var/lib/netinject/instance-id, one field per line: the applied instance uuid, the drive
# it came from ('vfat:<serial>', 'iso9660:<volume set id>'), the device it was on, and
# the path whose presence tells the launcher, on a later boot, that the same drive is
# there ('-': none; the agent decides, run.fast_path).


def format_state(instance: str, drive_ident: str, device: str, fast_path: str) -> str:
    return "%s\n%s\n%s\n%s\n" % (instance, drive_ident, device, fast_path)


def parse_state(raw: bytes) -> "list[str]":
    """The state file's fields ([] when it is not one)."""
    fields = raw.decode("ascii", "replace").split()
    return fields if fields and is_uuid(fields[0]) else []


# -- outcomes and the result line ------------------------------------------------------------


class Outcome:
    """What a boot run, an apply or an apply-status came to: one word, the value of
    ``outcome=`` in the result line; its message says why in words. Code and tests decide
    by these values, never by a message's text."""

    # The boot run.
    INSTALLED = "installed"  # a first boot: the files are in place
    NO_DRIVE = "no-drive"  # no config drive: the image's own config applies
    NO_PAYLOAD = "no-payload"  # a drive without netinject's payload (a legacy image)
    STEPPED_ASIDE = "stepped-aside"  # refused before changing anything (untrusted drive...)
    # The boot run and apply.
    UNCHANGED = "unchanged"  # nothing to do, or refused before changing anything
    ROLLED_BACK = "rolled-back"  # changes began, failed, and every file is as it was
    BROKEN = "broken"  # changes began, failed, and the rollback failed too: neither
    # Apply and apply-status.
    APPLIED = "applied"  # every file is new
    FENCED = "fenced"  # apply-status: the transaction never ran, and now never will
    BUSY = "busy"  # another run holds the lock: nothing was done or looked at; ask again


OUTCOMES = (Outcome.INSTALLED, Outcome.NO_DRIVE, Outcome.NO_PAYLOAD, Outcome.STEPPED_ASIDE,
            Outcome.UNCHANGED, Outcome.ROLLED_BACK, Outcome.BROKEN, Outcome.APPLIED,
            Outcome.FENCED, Outcome.BUSY)
# netinject-guest apply / apply-status exit statuses: the files are all new, all as they
# were, or (a rollback failed) neither.
APPLY_OK, APPLY_UNCHANGED, APPLY_BROKEN = 0, 1, 3


def exit_status(outcome: str) -> int:
    """apply's and apply-status's exit status for an outcome."""
    if outcome == Outcome.APPLIED:
        return APPLY_OK
    return APPLY_BROKEN if outcome == Outcome.BROKEN else APPLY_UNCHANGED


# The result line: the agent's last line on every boot, and what apply and apply-status
# print and record, for machines (the harness, the host's hot-plug, monitoring): the
# prefix, space-separated key=value pairs (no spaces in values), then ' -- ' and the
# message, for people.
RESULT_PREFIX = "netinject-result"
MESSAGE_SEP = " -- "


def format_result(outcome: str, elapsed_ms: "float | None" = None,
                  cpu_ms: "float | None" = None, message: str = "",
                  fields: "dict[str, object] | None" = None) -> str:
    """``outcome`` (one of OUTCOMES), the timings, ``fields`` (key=value; empty values
    left out) and the message."""
    if outcome not in OUTCOMES:
        raise ValueError("unknown outcome %r" % outcome)
    parts = [RESULT_PREFIX, "outcome=%s" % outcome]
    if elapsed_ms is not None:
        parts.append("elapsed_ms=%.1f" % elapsed_ms)
    if cpu_ms is not None:
        parts.append("cpu_ms=%.1f" % cpu_ms)
    parts += ["%s=%s" % (k, str(v).replace(" ", "_"))
              for k, v in sorted((fields or {}).items()) if v is not None and v != ""]
    line = " ".join(parts)
    message = " ".join(message.split())  # one line
    return line + MESSAGE_SEP + message if message else line


def parse_result(text: str) -> "dict[str, str] | None":
    """The last result line in ``text`` (a log, a console, apply's output) as a dict
    (its fields, and ``message`` when it has one), or None."""
    found = None
    for line in text.splitlines():
        at = line.find(RESULT_PREFIX + " ")
        if at < 0:
            continue
        head, sep, message = line[at + len(RESULT_PREFIX) + 1:].rstrip("\r").partition(
            MESSAGE_SEP)
        fields = {}
        for item in head.split(" "):
            key, eq, value = item.partition("=")
            if eq:
                fields[key] = value
        if fields.get("outcome") in OUTCOMES:
            if sep:
                fields["message"] = message
            found = fields
    return found
