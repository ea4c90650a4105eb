"""The network stacks: one descriptor per stack, holding everything netinject knows about
it. Standard library only; joined into the agent, imported by the host.

A drive (and a hot-plug bundle, and the vendordata answer) carries the config of every
stack; ``netinject-guest install`` detects the image's stack and records it in
/etc/netinject/stack, and the agent installs that stack's files and the shared ones
(udev rules, resolv.conf, hostname). What a descriptor holds:

* ``name``: how the image records it and ``--stack`` names it; ``format``: the host's
  renderer of its files (``netinject.render.<format>``);
* ``files``, ``dirs``: the guest paths of its files (the agent's allowlist is built from
  them: ``contract.is_allowed_path``), and ``private``: whether they are root's alone
  (0600: NetworkManager ignores a keyfile others can read, netplan warns);
* ``detect``: whether an image tree uses it, and why (``detect_stack`` ranks the
  answers); ``units``: the units that bring NICs up, which the agent's unit runs before;
* ``announces``: whether the agent must send the gratuitous ARPs (systemd-networkd
  sends none); ``aside`` and ``commit``: what the stack needs around an install
  (netplan: the image's own YAML moved aside, its generator run);
* ``check_live``, ``deactivate`` and ``activate``: live changes in a running guest
  (bringing the changed NICs' new config up, taking removed NICs' down, without
  touching the others; guest/live.py runs them as one transaction);
* ``debian_packages``, ``debian_enable``: what provides it in a Debian image (the test
  bed's images are built from these, on every release); ``debian_releases``: per Debian
  release the test bed builds (11 bullseye, 12 bookworm, 13 trixie), its version there and
  what differs, as checked in that release's packages and real boots (the code keeps no
  per-release conditionals: where a release differs, the descriptor's data covers it).

Adding a stack is a new descriptor in STACKS, its renderer module and its golden files
(tests/test_architecture.py lists what a new stack must provide).
"""

import os

from .errors import AgentError
from .paths import (
    exists,
    is_plain_name,
    isdir,
    islink,
    join,
    lexists,
    read_small,
    resolve_in_root,
)
from .proc import run_bounded, run_command, tool

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    Log = Callable[[str], None]  # (the agent's log.Log; stacks sits below it)

STACK_CONFIG = "etc/netinject/stack"
NOT_FOUND = 99  # detect_stack's rank of "none"


class ImageTree:
    """An image's files as its own system sees them: every path is looked up inside the
    tree as a chroot would (resolve_in_root), so the image's absolute symlinks lead back
    into it, never to the build host's files. At boot the root is '/'."""

    def __init__(self, root: str) -> None:
        self.root = root

    def at(self, rel: str, follow: bool = True) -> "str | None":
        """Where ``rel`` is on this machine; None when the guest could reach nothing
        there (a loop, a link to nothing, a file on the way)."""
        try:
            return resolve_in_root(self.root, rel, follow)
        except AgentError:
            return None

    def has(self, *rels: str) -> bool:
        """Whether any of ``rels`` exists."""
        for rel in rels:
            path = self.at(rel)
            if path is not None and exists(path):
                return True
        return False

    def has_dir(self, rel: str) -> bool:
        path = self.at(rel)
        return path is not None and isdir(path)

    def read_text(self, rel: str, limit: int = 1 << 20) -> "str | None":
        """A regular file's text (read non-blocking: a FIFO cannot hang the reader);
        None when there is none."""
        path = self.at(rel)
        if path is None:
            return None
        try:
            return read_small(path, limit).decode("utf-8")
        except (OSError, UnicodeError):
            return None

    def enabled(self, unit: str) -> bool:
        """Whether a systemd unit is enabled (a link in some *.wants), or aliased
        (a link at /etc/systemd/system/<unit>, as Debian's network-manager.service)."""
        base = "etc/systemd/system"
        where = self.at(base)
        try:
            dirs = [d for d in os.listdir(where) if d.endswith(".wants")] if where \
                else []
        except OSError:
            return False
        for d in dirs:
            link = self.at("%s/%s/%s" % (base, d, unit), follow=False)
            if link is not None and lexists(link):
                return True
        return False

    def alias(self, unit: str) -> bool:
        link = self.at("etc/systemd/system/" + unit, follow=False)
        return link is not None and lexists(link)

    def uses_systemd(self) -> bool:
        """Whether the image boots systemd: /sbin/init is a link naming it (Debian's
        /sbin/init -> /lib/systemd/systemd, also behind merged-usr's /sbin -> usr/sbin),
        or there is no /sbin/init but systemd."""
        init = self.at("sbin/init", follow=False)
        if init is not None and islink(init):
            try:
                return "systemd" in os.readlink(init)
            except OSError:
                return False
        return self.has("lib/systemd/systemd") and not self.has("sbin/init")


class Changes:
    """Which NICs a live change touches: added (in the new config only), changed (their
    config differs), removed (in the old config only), by name; ``files``: the guest
    paths the transaction changes (this stack's and the shared ones). Only NICs that are
    there (``present``) are brought up or down: one hot-plugged later comes up when it
    appears, and one detached first has nothing left to take down."""

    def __init__(self, root: str, added: "list[str]", changed: "list[str]",
                 removed: "list[str]", files: "list[str] | None" = None) -> None:
        self.root = root
        self.added = added
        self.changed = changed
        self.removed = removed
        self.files = files or []

    def present(self, names: "list[str]") -> "list[str]":
        return [n for n in names if lexists(join(self.root, "sys/class/net", n))]

    def reversed(self) -> "Changes":
        """What undoing this change is: the added NICs removed again, and so on."""
        return Changes(self.root, self.removed, self.changed, self.added, self.files)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def __str__(self) -> str:
        parts = ["%s %s" % (what, ",".join(names)) for what, names in (
            ("added", self.added), ("changed", self.changed), ("removed", self.removed))
            if names]
        return "; ".join(parts) or "no NIC"


# Time limits for the commands of a live change (kill, then roll back): ifup waits for
# DAD on IPv6 (~6 s) and can run hooks; D-Bus calls time out at 25 s.
LIVE_TIMEOUT = 60.0
DBUS_SOCKET = "run/dbus/system_bus_socket"


class Stack:
    """What netinject knows about one network stack (see the module docstring). The
    base class is a stack with no needs beyond its files."""

    name = ""
    format = ""
    files: "tuple[str, ...]" = ()
    dirs: "tuple[tuple[str, tuple[str, ...]], ...]" = ()
    # Files in another program's drop-in directories: (the directories' prefix, their
    # suffix, the files' suffixes), a path PREFIX<name>SUFFIX/<file> with <name> and
    # <file> plain names. Never private: the program may read them as its own user.
    dropins: "tuple[tuple[str, str, tuple[str, ...]], ...]" = ()
    private = False
    units: "tuple[str, ...]" = ()
    daemon = ""  # the unit whose start brings the NICs up (the test bed times it)
    announces = False
    debian_packages: "tuple[str, ...]" = ()
    debian_enable: "tuple[str, ...]" = ()
    debian_releases: "tuple[tuple[str, str], ...]" = ()

    def owns(self, path: str) -> bool:
        """Whether the guest path ``path`` is one of this stack's files (by place)."""
        return path in self.files or self.dropin(path) is not None or any(
            path.startswith(d) and is_plain_name(path[len(d):]) for d, _ in self.dirs)

    def dropin(self, path: str) -> "str | None":
        """The drop-in directory of ``dropins`` that the guest path ``path`` is a file
        of (with one of its suffixes); None when it is none."""
        for prefix, suffix, suffixes in self.dropins:
            if not path.startswith(prefix):
                continue
            d, _, name = path[len(prefix):].partition("/")
            if d.endswith(suffix) and is_plain_name(d[:-len(suffix)]) \
                    and is_plain_name(name) and name.endswith(suffixes):
                return prefix + d
        return None

    def is_private(self, path: str) -> bool:
        """Whether this stack's file at ``path`` is root's alone (0600)."""
        return self.private and self.dropin(path) is None

    def detect(self, tree: ImageTree) -> "tuple[int, str] | None":
        """(rank, why) when ``tree`` uses this stack; the lowest rank wins."""
        return None

    def aside(self, root: str, ours: "set[str]", log: "Log") -> "list[str]":
        """The image's own files of this stack that would override ours: moved aside in
        the same transaction (into the backup, whence a rollback restores them)."""
        return []

    def commit(self, root: str, log: "Log") -> None:
        """What must run once this stack's files are in place (or back in place after a
        rollback) for them to take effect at this boot; AgentError rolls back."""

    def check_live(self, root: str) -> None:
        """AgentError, before anything changes, when this guest cannot take a live
        change (a tool missing, the daemon or D-Bus not running)."""
        raise AgentError("live changes on %s images are not built yet" % self.name)

    def deactivate(self, root: str, changes: Changes, log: "Log",
                   force: bool = False) -> None:
        """Take the changed and removed NICs' current config down, before their files
        change (a stack that reads its files again when told to has nothing to do).
        ``force``: what a failed activation left is taken down too (a rollback)."""

    def activate(self, root: str, changes: Changes, log: "Log") -> None:
        """Bring the new config of the changed and added NICs up, and take the removed
        ones' down, in a running guest, without touching the other NICs; AgentError when
        the stack refuses (the caller rolls back)."""
        raise AgentError("live changes on %s images are not built yet" % self.name)

    def failed(self, root: str, names: "list[str]") -> "list[str]":
        """Which of ``names`` the stack has given up on (its config refused): a change
        checking the running state stops waiting for those."""
        return []

    def need(self, root: str, name: str) -> str:
        """The path of a program the activation runs (AgentError without it)."""
        path = tool(name, root)
        if path is None:
            raise AgentError("%s is not installed: this %s image cannot take live changes"
                             % (name, self.name))
        return path

    def run(self, argv: "list[str]", log: "Log", limit: float = LIVE_TIMEOUT) -> str:
        log("running %s" % " ".join(argv))
        return run_command(argv, limit, argv[0].rsplit("/", 1)[-1] + " " + " ".join(argv[1:]))


class Ifupdown(Stack):
    """Debian's ifupdown: /etc/network/interfaces. Its lines bring the routes up and
    send the gratuitous ARPs themselves. A NIC hot-plugged after its config is in place
    is brought up by ``allow-hotplug`` (udev runs ifup for it)."""

    name = "ifupdown"
    format = "eni"
    files = ("etc/network/interfaces",)
    dirs = (("etc/network/interfaces.d/", ("",)),
    )
    units = ("networking.service",)
    daemon = "networking.service"
    debian_packages = ("ifupdown", "isc-dhcp-client")
    debian_releases = (
        ("bullseye", "ifupdown 0.8.36, isc-dhcp-client 4.4.1"),
        ("bookworm", "ifupdown 0.8.41, isc-dhcp-client 4.4.3"),
        ("trixie", "ifupdown 0.8.44, isc-dhcp-client 4.4.3 (still ifupdown's DHCP client; "
                  "dhcpcd-base 10.1 is there too); merged /usr: the unit goes to "
                  "/lib/systemd/system, a link to /usr/lib"),
    )

    def detect(self, tree: ImageTree) -> "tuple[int, str] | None":
        if not tree.has("sbin/ifup", "usr/sbin/ifup"):
            return None
        if tree.enabled("networking.service"):
            return 20, "ifupdown's networking.service is enabled"
        if not tree.uses_systemd():
            return 20, "ifupdown is installed (sysvinit)"
        return 90, "ifupdown is installed"

    def check_live(self, root: str) -> None:
        self.need(root, "ifup")
        self.need(root, "ifdown")

    def deactivate(self, root: str, changes: Changes, log: "Log",
                   force: bool = False) -> None:
        """``ifdown`` each changed or removed NIC that is there while its old stanza is
        still in the file: ifupdown reads the file again on every call, so after the
        change it would run the new stanza's down lines, or for a removed stanza nothing.
        ifdown runs every down line whatever fails; ``force`` also takes down what a
        failed ifup left (it clears its state but not the addresses it added)."""
        ifdown = self.need(root, "ifdown")
        for name in changes.present(changes.changed + changes.removed):
            try:
                self.run([ifdown, "--force", name] if force else [ifdown, name], log)
            except AgentError as exc:  # (a NIC ifupdown never brought up)
                log("%s: %s" % (name, exc))

    def activate(self, root: str, changes: Changes, log: "Log") -> None:
        """``ifup`` each changed NIC that is there. An added NIC that is not there yet
        needs nothing: when it appears, udev names it by its rule and ``allow-hotplug``
        brings it up (ifup@.service); one already there is started the same way, so
        that its unplug later runs ifdown. Removed NICs were taken down before."""
        ifup = self.need(root, "ifup")
        for name in changes.present(changes.changed):
            self.run([ifup, name], log)
        systemctl = tool("systemctl", root)
        for name in changes.present(changes.added):
            if systemctl is not None and lexists(join(root, "run/systemd/system")):
                self.run([systemctl, "start", "ifup@%s.service" % name], log)
            else:
                self.run([ifup, name], log)


class Networkd(Stack):
    """systemd-networkd: .network and .link files. It sends no gratuitous ARP (its
    DuplicateAddressDetection=ipv4 announces only after holding the address ~6 s), so
    the agent announces the static IPv4 addresses (netinject-announce.service)."""

    name = "networkd"
    format = "networkd"
    dirs = (("etc/systemd/network/", (".network", ".link")),
    )
    units = ("systemd-networkd.service",)
    daemon = "systemd-networkd.service"
    announces = True
    # networkctl (reload: live changes) talks to networkd over D-Bus.
    debian_packages = ("dbus",)
    debian_enable = ("systemd-networkd.service",)
    debian_releases = (
        ("bullseye", "systemd 247: networkctl reload (since 244) is there, as live "
                    "changes need"),
        ("bookworm", "systemd 252"),
        ("trixie", "systemd 257 (networkd still in the systemd package)"),
    )

    def detect(self, tree: ImageTree) -> "tuple[int, str] | None":
        if tree.enabled("systemd-networkd.service"):
            return 40, "systemd-networkd.service is enabled"
        return None

    def check_live(self, root: str) -> None:
        self.need(root, "networkctl")
        if not lexists(join(root, DBUS_SOCKET)):
            raise AgentError("networkctl needs D-Bus, which is not running in this guest "
                             "(install dbus): systemd-networkd cannot be told of a change "
                             "without restarting it for every NIC")

    def activate(self, root: str, changes: Changes, log: "Log") -> None:
        """``networkctl reload`` (networkd reads its files again and configures the
        links whose file is new or changed, and only those; a removed file's link is
        unmanaged and its addresses dropped): networkd_reload. udev reads the .link
        files again first (a renamed NIC)."""
        udevadm = tool("udevadm", root)
        if udevadm is not None:
            self.run([udevadm, "control", "--reload"], log)
        networkd_reload(self, root, changes.present(changes.changed + changes.added), log)

    def failed(self, root: str, names: "list[str]") -> "list[str]":
        return networkd_failed(root, names)


class NetworkManager(Stack):
    """NetworkManager: keyfiles, root's alone (it ignores others). It never renames NICs
    (the udev rule does) and sends 3 gratuitous ARPs itself."""

    name = "nm"
    format = "nm"
    dirs = (("etc/NetworkManager/system-connections/", (".nmconnection",)),
    )
    private = True
    units = ("NetworkManager.service",)
    daemon = "NetworkManager.service"
    debian_packages = ("network-manager",)
    debian_enable = ("NetworkManager.service",)
    debian_releases = (
        ("bullseye", "NetworkManager 1.30.6: keyfiles in system-connections, nmcli "
                    "connection load and up as on the later releases"),
        ("bookworm", "NetworkManager 1.42.4"),
        ("trixie", "NetworkManager 1.52.1"),
    )

    def detect(self, tree: ImageTree) -> "tuple[int, str] | None":
        if tree.has("usr/sbin/NetworkManager") and (
                tree.enabled("NetworkManager.service")
                or tree.alias("network-manager.service")):
            return 30, "NetworkManager.service is enabled"
        return None

    def profile(self, name: str) -> str:
        """The keyfile (guest path) and connection id netinject's renderer writes."""
        return "%snetinject-%s.nmconnection" % (self.dirs[0][0], name)

    def check_live(self, root: str) -> None:
        nmcli = self.need(root, "nmcli")
        if not lexists(join(root, DBUS_SOCKET)):
            raise AgentError("nmcli needs D-Bus, which is not running in this guest")
        out = run_command([nmcli, "-t", "-f", "RUNNING", "general"], 15, "nmcli general")
        if out.strip() != "running":
            raise AgentError("NetworkManager is not running (nmcli says %r)"
                             % out.strip()[:80])

    def activate(self, root: str, changes: Changes, log: "Log") -> None:
        """``nmcli connection load`` of each changed, added or removed NIC's keyfile (a
        removed one unloads its profile, which takes it down), then ``nmcli connection
        up`` of each changed or added NIC that is there (an added one not there yet is
        activated by NetworkManager when it appears). nmcli reports a keyfile it cannot
        load on its output, not in its exit status: that is checked."""
        nmcli = self.need(root, "nmcli")
        for name in changes.changed + changes.added + changes.removed:
            path = "/" + self.profile(name)
            out = self.run([nmcli, "connection", "load", path], log, 15)
            if "Could not load" in out or "rror" in out:
                raise AgentError("NetworkManager refused %s: %s"
                                 % (path, " ".join(out.split())[-300:]))
        for name in changes.present(changes.changed + changes.added):
            self.run([nmcli, "-w", "45", "connection", "up", "id", "netinject-" + name,
                      "ifname", name], log)


class Netplan(Stack):
    """netplan, on networkd or NetworkManager: /etc/netplan/*.yaml, root's alone.

    netplan <= 1.1 (Debian bookworm's 0.106, trixie's 1.1, Ubuntu 22.04 and 24.04): its
    systemd generator ran before any unit, from the image's own YAML. So the agent moves
    aside the image's files that define NICs (netplan merges every file: a cloud image's
    ``dhcp4: true`` would stay on our NIC) and runs netplan's generator itself, as
    cloud-init does. netplan >= 1.2 generates in netplan-configure.service, which the
    agent's unit runs before: nothing to run then. On networkd it announces as networkd.
    """

    name = "netplan"
    format = "netplan"
    dirs = (("etc/netplan/", (".yaml",)),
    )
    # networkd's drop-in for the .network netplan generates for a NIC with static
    # addresses (render/netplan.py): ConfigureWithoutCarrier=yes.
    dropins = (("etc/systemd/network/10-netplan-", ".network.d", (".conf",)),)
    private = True
    units = ("netplan-configure.service",)
    daemon = "systemd-networkd.service"  # its default renderer (Debian's netplan.io)
    announces = True
    debian_packages = ("netplan.io", "dbus")  # (dbus: its backends' networkctl, nmcli)
    debian_releases = (
        ("bullseye", "netplan.io 0.101: the generator is /lib/netplan/generate; it refuses "
                     "a route 'to: default' (newer netplan's spelling), so the renderer "
                     "writes 0.0.0.0/0 and ::/0, which every release takes"),
        ("bookworm", "netplan.io 0.106: /usr/libexec/netplan/generate (and the older "
                    "paths as links)"),
        ("trixie", "netplan.io 1.1.2: /usr/libexec/netplan/generate only; still generated "
                  "by systemd's generator (no netplan-configure.service before 1.2)"),
    )
    # netplan.io 0.106 ships /usr/libexec/netplan/generate (older: /lib/netplan/generate).
    generators = ("usr/libexec/netplan/generate", "usr/lib/netplan/generate",
                  "lib/netplan/generate")
    configure_units = ("usr/lib/systemd/system/netplan-configure.service",
                       "lib/systemd/system/netplan-configure.service")
    # The generator takes well under a second on KVM and ~3 s under emulation, but a
    # first boot's cold run on a loaded emulated host was measured past 10 s; a FIFO
    # among the image's YAML would hold it forever. Twice this (a run, and the run on
    # the image's own files after a rollback) stays inside the unit's TimeoutStartSec=90.
    timeout = 30.0
    # netplan.io depends on python3-yaml (Debian, Ubuntu); the agent runs as python3 -IS,
    # without this directory on sys.path.
    dist_packages = "/usr/lib/python3/dist-packages"
    # What in an image's file would define, or build on, the NICs our file defines.
    nic_keys = ("ethernets", "bonds", "bridges", "vlans")

    def detect(self, tree: ImageTree) -> "tuple[int, str] | None":
        # First: it drives networkd or NetworkManager itself.
        if tree.has("usr/sbin/netplan", "usr/share/netplan/netplan.script") \
                and tree.has_dir("etc/netplan"):
            return 10, "netplan is installed (/etc/netplan)"
        return None

    def aside(self, root: str, ours: "set[str]", log: "Log") -> "list[str]":
        """The image's netplan files that define NICs, judged by parsing each
        (defines_nics), not by searching its text: a key may be written escaped
        ("\\x65thernets") and a comment may mention one. Ours are left out; so is what
        is not a regular file (read non-blocking: a FIFO cannot hang the agent here)."""
        d = self.dirs[0][0]
        try:
            names = sorted(os.listdir(join(root, d)))
        except FileNotFoundError:
            return []
        aside = []
        yaml = None
        for name in names:
            rel = d + name
            if rel in ours or not name.endswith(".yaml"):
                continue
            try:
                text = read_small(join(root, rel), 1 << 20)
            except OSError:
                continue
            if yaml is None:
                yaml = self.load_yaml()
            if self.defines_nics(yaml, text):
                aside.append(rel)
        return aside

    def load_yaml(self) -> "Any":
        """PyYAML, from the running system's python3-yaml: at boot the guest's own, under
        --root (tests) the host's. Its directory is added after the standard library for
        this one import, so nothing there can shadow a standard module. AgentError
        without it: the image's files cannot be judged."""
        import sys

        try:
            import yaml  # (already importable: a test's interpreter)
        except ImportError:
            sys.path.append(self.dist_packages)
            try:
                import yaml
            except ImportError:
                raise AgentError("cannot read the image's netplan files: no PyYAML "
                                 "(python3-yaml) in %s" % self.dist_packages) from None
            finally:
                sys.path.remove(self.dist_packages)
        return yaml

    def defines_nics(self, yaml: "Any", text: bytes) -> bool:
        """Whether an image's netplan file must make way for ours, from its parsed
        document (yaml.safe_load): its ``network`` defines ethernets, or bonds, bridges
        or vlans (built on ethernets: left with theirs moved aside, netplan would refuse
        them). Other files (renderer, wifis, an empty file) stay.

        A file that cannot be parsed, or whose structure netplan would refuse (a
        document or ``network`` that is not a mapping, one of those keys not a mapping),
        is moved aside too: netplan refuses the whole config with it in place, so it
        configures nothing now, and left there it would fail our generate and roll us
        back to the DHCP the image does not even get. It is kept in the backup."""
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
        for key in self.nic_keys:
            value = network.get(key)
            if value is not None and (value or not isinstance(value, dict)):
                return True
        return False

    def commit(self, root: str, log: "Log") -> None:
        """Run netplan's generator (the C binary ``netplan generate`` runs; not the
        Python CLI, whose start costs ~0.7 s on an emulated boot) so /run holds the
        backend config of the files now in /etc/netplan, as cloud-init does. Called so,
        the generator also reloads udev's rules and, during boot, asks systemd to start
        networkd "just in time". Bounded (``timeout``): an overrun is killed with what it
        started and is an AgentError like a failed run."""
        if any(exists(join(root, u)) for u in self.configure_units):
            log("netplan >= 1.2: netplan-configure.service generates after this unit")
            return
        binary = next((join(root, g) for g in self.generators if exists(join(root, g))),
                      None)
        if binary is None:
            raise AgentError("netplan's generator is not installed (%s)"
                             % " or ".join("/" + g for g in self.generators))
        argv = [binary] if root in ("", "/") else [binary, "--root-dir", root]
        run_bounded(argv, self.timeout, "netplan generate")
        log("ran netplan generate (%s)" % binary)

    # What netplan's generator writes under /run for one NIC (0.106 to 1.1): networkd's
    # files, its udev rules, NetworkManager's keyfiles. ``netplan generate`` deletes and
    # rewrites every one of them, which would have networkd reconfigure every link.
    generated = ("run/systemd/network/", "10-netplan-"), ("run/udev/rules.d/", "99-netplan-"), \
        ("run/NetworkManager/system-connections/", "netplan-")

    def check_live(self, root: str) -> None:
        if not any(exists(join(root, g)) for g in self.generators):
            raise AgentError("netplan's generator is not installed")
        if not lexists(join(root, DBUS_SOCKET)):
            raise AgentError("netplan's backends (networkctl, nmcli) need D-Bus, which is "
                             "not running in this guest (install dbus)")

    def activate(self, root: str, changes: Changes, log: "Log") -> None:
        """What ``netplan apply`` does, for the changed NICs only: the generator runs on
        a copy of /etc/netplan into a scratch root, and only the generated files whose
        content differs (or that are gone) are put in place under /run; then udev reads
        its rules again and the backend is told, as for that stack: networkd reloads
        (when the generated files or netinject's drop-ins changed), NetworkManager loads
        the changed keyfiles and brings the changed NICs up."""
        import shutil
        import tempfile

        binary = next(join(root, g) for g in self.generators if exists(join(root, g)))
        scratch = tempfile.mkdtemp(prefix="netinject-netplan-")
        try:
            shutil.copytree(join(root, self.dirs[0][0]), join(scratch, self.dirs[0][0]))
            run_bounded([binary, "--root-dir", scratch], self.timeout, "netplan generate")
            touched = self._sync_generated(root, scratch, log)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        udevadm = tool("udevadm", root)
        if udevadm is not None:
            self.run([udevadm, "control", "--reload"], log)
        names = changes.present(changes.changed + changes.added)
        if any(t.startswith(self.generated[0][0]) for t in touched) \
                or any(self.networkd_dropin(root, f) for f in changes.files):
            networkd_reload(self, root, names, log)
        nm = [t for t in touched if t.startswith(self.generated[2][0])]
        if nm:
            nmcli = self.need(root, "nmcli")
            for path in nm:
                self.run([nmcli, "connection", "load", "/" + path], log, 15)
            for name in names:
                self.run([nmcli, "-w", "45", "device", "reapply", name], log)

    def failed(self, root: str, names: "list[str]") -> "list[str]":
        return networkd_failed(root, names)

    def networkd_dropin(self, root: str, path: str) -> bool:
        """Whether ``path`` is our drop-in for a .network netplan generated (networkd is
        the backend: under NetworkManager nothing reads it, and networkd is not asked
        to reload for it, which it may not even be running to do)."""
        d = self.dropin(path)
        return d is not None and lexists(join(
            root, self.generated[0][0], d.rsplit("/", 1)[-1][:-len(".d")]))

    def _sync_generated(self, root: str, scratch: str, log: "Log") -> "list[str]":
        """Put the generator's output from ``scratch`` in place under ``root``/run where
        it differs (copied beside its target, then renamed over it, as netplan's own
        generator leaves whole files); remove what it no longer generates. The guest
        paths touched."""
        import shutil

        touched = []
        for d, prefix in self.generated:
            new = {n for n in _listdir(join(scratch, d)) if n.startswith(prefix)}
            old = {n for n in _listdir(join(root, d)) if n.startswith(prefix)}
            for name in sorted(new):
                data = read_small(join(scratch, d, name), 1 << 20)
                mode = os.stat(join(scratch, d, name)).st_mode & 0o777
                try:
                    same = read_small(join(root, d, name), 1 << 20) == data
                except OSError:
                    same = False
                if not same:
                    os.makedirs(join(root, d), exist_ok=True)
                    tmp = join(root, d, ".%s.netinject-tmp" % name)
                    shutil.copyfile(join(scratch, d, name), tmp)
                    os.chmod(tmp, mode)
                    os.rename(tmp, join(root, d, name))
                    touched.append(d + name)
            for name in sorted(old - new):
                os.unlink(join(root, d, name))
                touched.append(d + name)
        log("netplan's output: %s" % (", ".join("/" + t for t in touched) or "no change"))
        return touched


def networkd_failed(root: str, names: "list[str]") -> "list[str]":
    """The links systemd-networkd has given up on (ADMIN_STATE=failed in its state
    file, /run/systemd/netif/links/<ifindex>): a route or address the kernel refused."""
    out = []
    for name in names:
        try:
            index = read_small(join(root, "sys/class/net", name, "ifindex")).decode().strip()
            state = read_small(join(root, "run/systemd/netif/links", index)).decode()
        except (OSError, UnicodeError):
            continue
        if "ADMIN_STATE=failed" in state.split("\n"):
            out.append(name)
    return out


def networkd_reload(stack: Stack, root: str, names: "list[str]", log: "Log") -> None:
    """``networkctl reload``: networkd reads its files again and configures each link
    whose .network file (or drop-in) is new, changed or gone, and no other (networkctl(1);
    seen on systemd 247, 252 and 257). No ``networkctl reconfigure`` after it: on 247
    and 252 that drops the link's addresses and adds them again (a hot-plugged NIC
    answered ARP, then had no address for ~30 ms), for nothing reload has not done.
    A link networkd gave up on (its old config refused: a rollback) is left alone by
    reload (systemd 252); only restarting networkd recovers it, which reconfigures every
    link (their static addresses are kept; DHCP leases too, networkd >= 244): done then,
    and said. ``names``: the changed and added NICs that are there."""
    networkctl = stack.need(root, "networkctl")
    stack.run([networkctl, "reload"], log)
    stuck = networkd_failed(root, names)
    if stuck:
        systemctl = stack.need(root, "systemctl")
        log("networkd gave up on %s: restarting it" % ", ".join(stuck))
        stack.run([systemctl, "restart", "systemd-networkd.service"], log)


def _listdir(path: str) -> "list[str]":
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


IFUPDOWN = Ifupdown()
NETWORKD = Networkd()
NETPLAN = Netplan()
NM = NetworkManager()
STACKS = (IFUPDOWN, NETWORKD, NETPLAN, NM)
"""Every stack netinject serves, in the order their files are rendered and listed."""
STACK_NAMES = tuple(s.name for s in STACKS)


def stack_named(name: str) -> Stack:
    for s in STACKS:
        if s.name == name:
            return s
    raise AgentError("unknown network stack %r (known: %s)"
                     % (name[:40], ", ".join(STACK_NAMES)))


def stack_of(path: str) -> "Stack | None":
    """The stack whose file a guest path is (None: every stack uses it)."""
    for s in STACKS:
        if s.owns(path):
            return s
    return None


def detect_stack(root: str) -> "tuple[Stack | None, str]":
    """The stack the image at ``root`` brings its NICs up with, and why we think so: the
    best-ranked answer of every descriptor's detect (netplan first, as it drives networkd
    or NetworkManager itself; then ifupdown with networking enabled or under sysvinit,
    NetworkManager, systemd-networkd, and ifupdown merely installed). (None, why) when
    there is none."""
    tree = ImageTree(root)
    found = sorted((hit[0], i, s, hit[1]) for i, s in enumerate(STACKS)
                   for hit in [s.detect(tree)] if hit is not None)
    if not found:
        return None, "no ifupdown, netplan, NetworkManager or enabled systemd-networkd"
    return found[0][2], found[0][3]


def read_stack(root: str) -> Stack:
    """The stack ``install`` recorded (ifupdown when there is no record: agents from
    before stacks were known served only those images)."""
    try:
        text = read_small(join(root, STACK_CONFIG)).decode("ascii").strip()
    except FileNotFoundError:
        return IFUPDOWN
    except (OSError, UnicodeError) as exc:
        raise AgentError("cannot read /%s: %s" % (STACK_CONFIG, exc)) from None
    try:
        return stack_named(text)
    except AgentError:
        raise AgentError("/%s names an unknown stack %r" % (STACK_CONFIG, text[:40])
                         ) from None
