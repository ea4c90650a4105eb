"""Installing the agent into an image tree, and removing it again.

Never imported at boot: ``netinject guest-bundle`` ships it beside the joined agent, and
the host's image builder calls it directly.
"""

import posix
import sys

from .contract import STACKS, STATE_DIR
from .install import write_atomic
from .paths import dirname, exists, isdir, isfile, islink, join, lexists, makedirs, relative_to
from .stacks import ANNOUNCING_STACKS, STACK_CONFIG

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

UNIT_NAME = "netinject.service"
UNIT = """\
[Unit]
Description=netinject: install the injected static network config from the config drive
Documentation=file:/usr/lib/netinject/netinject_guest.py
DefaultDependencies=no
Wants=network-pre.target
After=systemd-udevd.service systemd-udev-trigger.service systemd-remount-fs.service
After=local-fs.target
Before=network-pre.target networking.service systemd-networkd.service NetworkManager.service
Before=netplan-configure.service
Before=shutdown.target
Conflicts=shutdown.target
ConditionPathExists=/usr/sbin/netinject-guest

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/netinject-guest run
# On the boot's critical path (networking waits for it) while udev, journald and friends
# compete for the CPU: let it finish first. The launcher asks for the lowest real-time
# priority only under this bound: 200 ms of CPU without a blocking call brings SIGXCPU,
# 400 ms SIGKILL (the agent normally blocks on I/O every few ms), so a looping bug cannot
# stall the boot.
Nice=-10
LimitRTTIME=200ms:400ms
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=30

[Install]
WantedBy=multi-user.target
"""

ANNOUNCE_UNIT_NAME = "netinject-announce.service"
ANNOUNCE_UNIT = """\
[Unit]
Description=netinject: announce the injected IPv4 addresses (gratuitous ARP) once up
Documentation=file:/usr/lib/netinject/netinject_guest.py
# systemd-networkd sends no gratuitous ARP: after a move the network learns the new
# place of an address only when it next speaks. The agent leaves the static addresses
# in /run/netinject/announce on an instance's first boot only.
DefaultDependencies=no
After=netinject.service systemd-networkd.service
Before=shutdown.target
Conflicts=shutdown.target
ConditionPathExists=/run/netinject/announce

[Service]
# Not a oneshot: nothing waits for it (it waits, up to 60 s, for networkd).
Type=exec
ExecStart=/usr/sbin/netinject-guest announce
TimeoutStartSec=10

[Install]
WantedBy=multi-user.target
"""

INIT_SCRIPT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          netinject
# Required-Start:    mountkernfs $local_fs
# Required-Stop:
# Should-Start:      udev
# X-Start-Before:    networking
# Default-Start:     S
# Default-Stop:
# Short-Description: Install injected static network config before networking
# Description:       Reads the config drive (label config-2) and, on the instance's
#                    first boot, installs its network files and renames NICs.
### END INIT INFO

case "$1" in
  start)
    [ -x /usr/sbin/netinject-guest ] && /usr/sbin/netinject-guest run
    ;;
  stop|restart|force-reload|status)
    ;;
  *)
    echo "Usage: /etc/init.d/netinject {start|stop}" >&2
    exit 3
    ;;
esac
exit 0
"""

MODULE_PATH = "usr/lib/netinject/netinject_guest.py"
LAUNCHER_PATH = "usr/sbin/netinject-guest"
UNIT_PATH = "lib/systemd/system/" + UNIT_NAME
WANTS_LINK = "etc/systemd/system/multi-user.target.wants/" + UNIT_NAME
ANNOUNCE_UNIT_PATH = "lib/systemd/system/" + ANNOUNCE_UNIT_NAME
ANNOUNCE_WANTS_LINK = "etc/systemd/system/multi-user.target.wants/" + ANNOUNCE_UNIT_NAME
INIT_PATH = "etc/init.d/netinject"
RCS_LINK = "etc/rcS.d/S01netinject"
GENERATOR_RULES = "lib/udev/rules.d/75-persistent-net-generator.rules"
GENERATOR_OVERRIDE = "etc/udev/rules.d/75-persistent-net-generator.rules"
KVM_EXCLUSION = r'^(ENV\{MATCHADDR\}=="\?\[2367abef\]:\*",\s*)ENV\{MATCHADDR\}=""'


def uses_systemd(root: str) -> bool:
    init = join(root, "sbin/init")
    if islink(init):
        return "systemd" in posix.readlink(init)
    return exists(join(root, "lib/systemd/systemd")) and not exists(
        join(root, "sbin/init"))


def fix_generator(root: str) -> "str | None":
    """The seed's Debian fix: let the persistent-net generator honour KVM NICs."""
    for rel in (GENERATOR_OVERRIDE, GENERATOR_RULES):
        path = join(root, rel)
        if not isfile(path):
            continue
        with open(path) as fh:
            text = fh.read()
        if "globally_administered_whitelist" not in text:
            return None
        import re

        fixed = re.sub(KVM_EXCLUSION, r'\1GOTO="globally_administered_whitelist"', text,
                       flags=re.MULTILINE)
        if fixed == text:
            return None
        write_atomic(join(root, GENERATOR_OVERRIDE), fixed.encode(), 0o644)
        return GENERATOR_OVERRIDE
    return None


def _enabled(root: str, unit: str) -> bool:
    """Whether a systemd unit is enabled in the image (a link in some *.wants)."""
    base = join(root, "etc/systemd/system")
    try:
        dirs = [d for d in posix.listdir(base) if d.endswith(".wants")]
    except OSError:
        return False
    return any(lexists(join(base, d, unit)) for d in dirs)


def _installed(root: str, *paths: str) -> bool:
    return any(exists(join(root, p)) for p in paths)


def detect_stack(root: str) -> "tuple[str | None, str]":
    """The network stack the image brings its NICs up with, and why we think so. In
    order: netplan (it drives networkd or NetworkManager itself), ifupdown when its
    networking service is enabled, NetworkManager, systemd-networkd. (None, why) when
    there is none."""
    if _installed(root, "usr/sbin/netplan", "usr/share/netplan/netplan.script") \
            and isdir(join(root, "etc/netplan")):
        return "netplan", "netplan is installed (/etc/netplan)"
    if _installed(root, "sbin/ifup", "usr/sbin/ifup") and _enabled(root, "networking.service"):
        return "ifupdown", "ifupdown's networking.service is enabled"
    if not uses_systemd(root) and _installed(root, "sbin/ifup", "usr/sbin/ifup"):
        return "ifupdown", "ifupdown is installed (sysvinit)"
    if _installed(root, "usr/sbin/NetworkManager") and (
            _enabled(root, "NetworkManager.service")
            or lexists(join(root, "etc/systemd/system/network-manager.service"))):
        return "nm", "NetworkManager.service is enabled"
    if _enabled(root, "systemd-networkd.service"):
        return "networkd", "systemd-networkd.service is enabled"
    if _installed(root, "sbin/ifup", "usr/sbin/ifup"):
        return "ifupdown", "ifupdown is installed"
    return None, "no ifupdown, netplan, NetworkManager or enabled systemd-networkd"


def _symlink(target: str, link: str) -> None:
    makedirs(dirname(link))
    if lexists(link):
        posix.unlink(link)
    posix.symlink(target, link)


def precompile(root: str) -> "str | None":
    """Byte-compile the installed module when the image's Python has this interpreter's
    bytecode format (same minor version), so no boot pays for compiling it."""
    tag = "python%d.%d" % sys.version_info[:2]
    if root != "/" and not isdir(join(root, "usr/lib", tag)):
        return None
    import py_compile

    src = join(root, MODULE_PATH)
    cfile = join(dirname(src), "__pycache__",
                         "netinject_guest.%s.pyc" % sys.implementation.cache_tag)
    py_compile.compile(src, cfile=cfile, dfile="/" + MODULE_PATH, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    return cfile


def install_agent(root: str, out: "Callable[[str], None]", agent_source: bytes,
                  launcher_source: bytes, stack: "str | None" = None) -> int:
    """Install the boot service into the image tree at ``root``: the joined agent module
    (``agent_source``), its launcher, the systemd unit and the rcS script, and record the
    image's network stack (``stack``, else detected) for the agent. Returns 2 (and
    installs nothing) when no stack is given and none is found."""
    r = root
    if stack is None:
        stack, why = detect_stack(r)
        if stack is None:
            sys.stderr.write("netinject-guest install: error: cannot tell this image's "
                             "network stack (%s); give --stack (one of %s)\n"
                             % (why, ", ".join(STACKS)))
            return 2
        out("network stack: %s (%s)" % (stack, why))
    elif stack not in STACKS:
        sys.stderr.write("netinject-guest install: error: --stack %r: choose one of %s\n"
                         % (stack, ", ".join(STACKS)))
        return 2
    else:
        out("network stack: %s (given)" % stack)
    write_atomic(join(r, MODULE_PATH), agent_source, 0o644)
    try:
        cfile = precompile(r)
    except (OSError, SyntaxError) as exc:
        cfile = None
        out("could not precompile the agent (%s); it compiles on first use" % exc)
    write_atomic(join(r, LAUNCHER_PATH), launcher_source, 0o755)
    write_atomic(join(r, UNIT_PATH), UNIT.encode(), 0o644)
    write_atomic(join(r, INIT_PATH), INIT_SCRIPT.encode(), 0o755)
    write_atomic(join(r, STACK_CONFIG), (stack + "\n").encode(), 0o644)
    # The state and backup directories exist before the first boot: two mkdirs fewer on
    # the boot path.
    makedirs(join(r, STATE_DIR, "backup"), 0o700)
    out("installed /%s, /%s, /%s, /%s" % (MODULE_PATH, LAUNCHER_PATH, UNIT_PATH, INIT_PATH))
    if cfile:
        out("precompiled /%s" % relative_to(r, cfile))
    if uses_systemd(r):
        _symlink("/" + UNIT_PATH, join(r, WANTS_LINK))
        out("enabled %s (systemd)" % UNIT_NAME)
        if stack in ANNOUNCING_STACKS:
            write_atomic(join(r, ANNOUNCE_UNIT_PATH), ANNOUNCE_UNIT.encode(), 0o644)
            _symlink("/" + ANNOUNCE_UNIT_PATH, join(r, ANNOUNCE_WANTS_LINK))
            out("enabled %s (systemd-networkd sends no gratuitous ARP)"
                % ANNOUNCE_UNIT_NAME)
    else:
        # insserv orders rcS by the LSB header; with --root we place the link ourselves
        # at the front of rcS (X-Start-Before: networking holds trivially).
        _symlink("../init.d/netinject", join(r, RCS_LINK))
        out("enabled /%s (sysvinit rcS)" % RCS_LINK)
    fixed = fix_generator(r)
    if fixed:
        out("applied the KVM persistent-net fix in /%s" % fixed)
    return 0


def uninstall_agent(root: str, out: "Callable[[str], None]") -> int:
    cache = join(root, dirname(MODULE_PATH), "__pycache__")
    compiled = [relative_to(root, join(cache, f))
                for f in (posix.listdir(cache) if isdir(cache) else [])
                if f.startswith("netinject_guest.")]
    for rel in (WANTS_LINK, ANNOUNCE_WANTS_LINK, RCS_LINK, UNIT_PATH, ANNOUNCE_UNIT_PATH,
                INIT_PATH, LAUNCHER_PATH, MODULE_PATH, STACK_CONFIG, *compiled):
        path = join(root, rel)
        if lexists(path):
            posix.unlink(path)
            out("removed /%s" % rel)
    # Directories go only when empty: recorded state and backups of a booted image stay.
    for d in (cache, join(root, dirname(MODULE_PATH)), join(root, dirname(STACK_CONFIG)),
              join(root, STATE_DIR, "backup"), join(root, STATE_DIR)):
        try:
            posix.rmdir(d)
        except OSError:
            pass
    override = join(root, GENERATOR_OVERRIDE)
    if isfile(override):
        with open(override) as fh:
            if 'GOTO="globally_administered_whitelist"' in fh.read():
                posix.unlink(override)
                out("removed /%s" % GENERATOR_OVERRIDE)
    return 0


def main(argv: "list[str]", agent_source: bytes, launcher_source: bytes) -> int:
    """``install``/``uninstall`` [--root IMAGE] (what the bundle's __main__ runs)."""
    import argparse

    p = argparse.ArgumentParser(
        prog="netinject-guest",
        description="Install netinject's guest agent into an image (or remove it).")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    for name, helptext in (("install", "make this image run the agent at boot"),
                           ("uninstall", "remove what install added")):
        i = sub.add_parser(name, help=helptext)
        i.add_argument("--root", default="/", help="image root (default: this system)")
        if name == "install":
            i.add_argument("--stack", choices=STACKS,
                           help="the image's network stack, whose files the agent installs "
                                "(default: detected: netplan, ifupdown with networking "
                                "enabled, NetworkManager, systemd-networkd, in that order)")
    args = p.parse_args(argv)
    if args.cmd == "install":
        return install_agent(args.root, print, agent_source, launcher_source, args.stack)
    return uninstall_agent(args.root, print)
