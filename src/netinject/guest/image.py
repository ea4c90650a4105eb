"""Installing the agent into an image tree, and removing it again.

Never imported at boot: ``netinject guest-bundle`` ships it beside the joined agent, and
the host's image builder calls it directly.

Every path of the image is looked up inside it as a chroot would (resolve_in_root): the
image's symlinks are the guest's, so an absolute one starts again at the image's root
and none can lead to the build host's files. What install writes and uninstall removes
is looked up before anything changes; an image that cannot take a file where the guest
would find it (a loop, a link to nothing in the image, a directory in the way) is
refused with exit 2 and nothing written.
"""

import os
import re
import stat
import sys

from .contract import STATE_DIR, AgentError
from .install import tmp_beside, write_atomic
from .others import (
    GLEAN_ENV,
    GLEAN_UNITS,
    GLEAN_VAR,
    SWITCHES,
    glean_dropin_path,
)
from .paths import dirname, isdir, lexists, makedirs, resolve_in_root
from .stacks import STACK_CONFIG, STACK_NAMES, STACKS, ImageTree, detect_stack, stack_named

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
Before=network-pre.target %s
# cloud-init's local stage reads the switch the agent writes (guest/others.py).
Before=cloud-init-local.service
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
# Bounds a hung netplan generator twice (a run and the rollback's run, 30 s each).
TimeoutStartSec=90

[Install]
WantedBy=multi-user.target
""" % " ".join(u for s in STACKS for u in s.units)  # (before every stack's: stacks.py)

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

# -- day 2: the triggers of ``netinject-guest sync`` (guest/metadata.py) -------------------
#
# The drift timer's default period, 30 min with up to 5 min of randomized delay:
# - against DHCP: Neutron's default lease (dhcp_lease_duration = 86,400 s) renews at
#   T1 = lease/2, every ~12 h; a DHCP guest learns a subnet's new DNS servers or host
#   routes only then. Every 30 min delivers drift 24x sooner.
# - against load: every read of vendor_data2.json costs a metadata-API request and a call
#   of our vendordata service (nova caches neither for it). 10,000 guests / 1,800 s =
#   ~5.6 calls/s, which one worker of the service sustains (it builds a payload in
#   milliseconds); the randomized delay spreads guests that booted together.
# Hot-plug does not wait for the timer: udev starts a sync for the NIC at once.
SYNC_PERIOD = 1800
SYNC_BOOT_DELAY = 120  # the first check after boot (the drive may be days old)
SYNC_UNIT_NAME = "netinject-sync.service"
SYNC_TIMER_NAME = "netinject-sync.timer"
SYNC_ADD_NAME = "netinject-sync-add@.service"
SYNC_REMOVE_NAME = "netinject-sync-remove@.service"
SYNC_CONF = "etc/netinject/sync.conf"

_SYNC_SERVICE = """\
[Service]
Type=oneshot
# 1: unchanged (no information, nothing to change, the NIC never came): not a failure.
SuccessExitStatus=1
TimeoutStartSec=5min
"""

SYNC_UNIT = """\
[Unit]
Description=netinject: take network config changes from nova's metadata API
Documentation=file:/usr/lib/netinject/netinject_guest.py
After=netinject.service network-online.target
Wants=network-online.target
ConditionPathExists=/usr/sbin/netinject-guest
ConditionPathExists=/var/lib/netinject/instance-id

""" + _SYNC_SERVICE + """\
ExecStart=/usr/sbin/netinject-guest sync
"""

SYNC_TIMER = """\
[Unit]
Description=netinject: check nova's metadata API for network config drift
Documentation=file:/usr/lib/netinject/netinject_guest.py

[Timer]
# The period: /etc/netinject/sync.conf (period=SECONDS, enabled=no), read by
# netinject-sync-generator at boot and on daemon-reload.
OnBootSec=%ds
OnUnitActiveSec=%ds
RandomizedDelaySec=%ds
# (systemd's default accuracy is 1 min; 1/60 of the period, so that a short period
# set in sync.conf is kept as short.)
AccuracySec=%ds

[Install]
WantedBy=timers.target
""" % (SYNC_BOOT_DELAY, SYNC_PERIOD, SYNC_PERIOD // 6, SYNC_PERIOD // 60)

def _sync_nic_unit(what: str, option: str) -> str:
    """A template unit udev starts for one NIC (%i): ``sync OPTION %i``."""
    return """\
[Unit]
Description=netinject: %s
Documentation=file:/usr/lib/netinject/netinject_guest.py
After=netinject.service
ConditionPathExists=/usr/sbin/netinject-guest
ConditionPathExists=/var/lib/netinject/instance-id

""" % what + _SYNC_SERVICE + "ExecStart=/usr/sbin/netinject-guest sync %s %%i\n" % option


SYNC_ADD_UNIT = _sync_nic_unit("configure the hot-plugged NIC %i from nova's metadata API",
                               "--mac")
SYNC_REMOVE_UNIT = _sync_nic_unit("remove the config of the unplugged NIC %i", "--removed")

# udev runs nothing long itself: an added NIC pulls in the template unit through its
# device unit (SYSTEMD_WANTS, with its MAC as the instance; the agent checks it again
# and does nothing for a MAC already configured, as at every boot's coldplug); a
# removed NIC has no device unit left, so RUN only queues the job (--no-block) and
# returns. Virtual links (veth, bridges, tun: /devices/virtual) are none of ours.
SYNC_RULES = """\
# netinject: a NIC that appears or goes is synced from nova's metadata API
# (netinject-guest sync --mac MAC / --removed NAME). Installed by netinject-guest install.
SUBSYSTEM!="net", GOTO="netinject_sync_end"
DEVPATH=="/devices/virtual/*", GOTO="netinject_sync_end"
ACTION=="add", ATTR{address}=="?*", TAG+="systemd", \\
  ENV{SYSTEMD_WANTS}+="netinject-sync-add@$attr{address}.service"
ACTION=="remove", KERNEL=="eth[0-9]*", \\
  RUN+="/bin/systemctl --no-block start netinject-sync-remove@%k.service"
LABEL="netinject_sync_end"
"""

# A systemd generator (POSIX sh: it runs before any unit, even on an image without
# Python's argparse): /etc/netinject/sync.conf's period=SECONDS (digits only, 60 s to
# 7 days) becomes a drop-in for the timer in the generator's output directory (so
# nothing under /etc is written, and a changed file takes effect on daemon-reload or
# the next boot); enabled=no masks the timer there. Anything else is ignored with a
# message on stderr (the journal), and the unit's default stays.
SYNC_GENERATOR = """\
#!/bin/sh
# netinject-sync-generator: the period of netinject-sync.timer from
# /etc/netinject/sync.conf. Installed by netinject-guest install.
conf=${NETINJECT_SYNC_CONF:-/%s}
out=$1
[ -n "$out" ] && [ -f "$conf" ] || exit 0
warn() {
    echo "netinject-sync-generator: $conf: $1" >&2
}
period=
enabled=yes
n=0
while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    case $line in
        '' | '#'*) ;;
        period=*)
            value=${line#period=}
            case $value in
                [1-9] | [1-9][0-9] | [1-9][0-9][0-9] | [1-9][0-9][0-9][0-9] | \\
                [1-9][0-9][0-9][0-9][0-9] | [1-9][0-9][0-9][0-9][0-9][0-9])
                    if [ "$value" -ge 60 ] && [ "$value" -le 604800 ]; then
                        period=$value
                    else
                        warn "line $n: period is not 60 to 604800 seconds; ignored"
                    fi ;;
                *) warn "line $n: period is not a number of seconds; ignored" ;;
            esac ;;
        enabled=yes | enabled=no) enabled=${line#enabled=} ;;
        *) warn "line $n: not period=SECONDS or enabled=yes|no; ignored" ;;
    esac
done < "$conf"
if [ "$enabled" = no ]; then
    ln -sf /dev/null "$out/%s"
    exit 0
fi
[ -n "$period" ] || exit 0
mkdir -p "$out/%s.d"
# (An empty OnUnitActiveSec= resets every trigger of the timer: OnBootSec comes back.
# The first check after boot comes after %d s, or after one period if that is shorter.)
boot=%d
[ "$period" -lt "$boot" ] && boot=$period
{
    echo "[Timer]"
    echo "OnUnitActiveSec="
    echo "OnBootSec=${boot}s"
    echo "OnUnitActiveSec=${period}s"
    echo "RandomizedDelaySec=$((period / 6))s"
    echo "AccuracySec=$((period / 60))s"
} > "$out/%s.d/50-netinject-period.conf"
""" % (SYNC_CONF, SYNC_TIMER_NAME, SYNC_TIMER_NAME, SYNC_BOOT_DELAY, SYNC_BOOT_DELAY,
       SYNC_TIMER_NAME)

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
SYNC_UNIT_PATH = "lib/systemd/system/" + SYNC_UNIT_NAME
SYNC_TIMER_PATH = "lib/systemd/system/" + SYNC_TIMER_NAME
SYNC_TIMER_LINK = "etc/systemd/system/timers.target.wants/" + SYNC_TIMER_NAME
SYNC_ADD_PATH = "lib/systemd/system/" + SYNC_ADD_NAME
SYNC_REMOVE_PATH = "lib/systemd/system/" + SYNC_REMOVE_NAME
SYNC_RULES_PATH = "lib/udev/rules.d/85-netinject-sync.rules"
SYNC_GENERATOR_PATH = "lib/systemd/system-generators/netinject-sync-generator"
SYNC_FILES = (  # (guest path, text, mode): what install writes on a systemd image
    (SYNC_UNIT_PATH, SYNC_UNIT, 0o644), (SYNC_TIMER_PATH, SYNC_TIMER, 0o644),
    (SYNC_ADD_PATH, SYNC_ADD_UNIT, 0o644), (SYNC_REMOVE_PATH, SYNC_REMOVE_UNIT, 0o644),
    (SYNC_RULES_PATH, SYNC_RULES, 0o644), (SYNC_GENERATOR_PATH, SYNC_GENERATOR, 0o755))
KVM_EXCLUSION = r'^(ENV\{MATCHADDR\}=="\?\[2367abef\]:\*",\s*)ENV\{MATCHADDR\}=""'


def generator_fix(tree: ImageTree) -> "bytes | None":
    """The seed's Debian fix: the image's persistent-net generator rule (its override in
    /etc if there is one) with the KVM exclusion turned into a jump to the whitelist, to
    be written as the override; None when there is nothing to fix."""
    for rel in (GENERATOR_OVERRIDE, GENERATOR_RULES):
        text = tree.read_text(rel)
        if text is None:
            continue
        if "globally_administered_whitelist" not in text:
            return None
        import re

        fixed = re.sub(KVM_EXCLUSION, r'\1GOTO="globally_administered_whitelist"', text,
                       flags=re.MULTILINE)
        return fixed.encode() if fixed != text else None
    return None


def _placed(root: str, rel: str, staged: bool = True) -> None:
    """Check, before anything is written, that ``rel`` can be written where the guest
    will find it: its directory resolves inside the image (resolve_in_root), and at the
    name (and at its staging name, for a file write_atomic stages) there is nothing but
    a file or a symlink, which are replaced. AgentError otherwise: found midway, it
    would leave the image half installed."""
    path = resolve_in_root(root, rel, follow_last=False)
    kind = _kind(path)
    if kind not in ("absent", "file", "symlink"):
        raise AgentError("/%s: a %s is in the way" % (rel, kind))
    kind = _kind(tmp_beside(path))
    if staged and kind not in ("absent", "file"):
        raise AgentError("%s: a %s is in the way (not a file install left)"
                         % (tmp_beside("/" + rel), kind))


def _kind(path: str) -> str:
    """What is at ``path`` itself (not followed), in words."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "absent"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "directory" if stat.S_ISDIR(mode) else "special file"


def _symlink(root: str, target: str, rel: str) -> None:
    """A symlink at ``rel`` of the image (a link or file there is replaced)."""
    path = resolve_in_root(root, rel, follow_last=False)
    makedirs(dirname(path))
    if lexists(path):
        os.unlink(path)
    os.symlink(target, path)


def _pyc_path(root: str) -> "str | None":
    """Where the compiled module goes when the image's Python has this interpreter's
    bytecode format (same minor version); None when it has not."""
    tag = "python%d.%d" % sys.version_info[:2]
    python = ImageTree(root).at("usr/lib/" + tag)
    if (root != "/" and (python is None or not isdir(python))) \
            or sys.implementation.cache_tag is None:
        return None
    return "%s/__pycache__/netinject_guest.%s.pyc" % (dirname(MODULE_PATH),
                                                     sys.implementation.cache_tag)


# Where an image keeps unit files (the admin's first: systemd's own precedence).
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")
# One ExecStartPre=/ExecStart= line of a unit: printable ASCII, no continuation.
_EXEC_LINE = re.compile(r"(ExecStartPre|ExecStart)\s*=\s*([\x21-\x5b\x5d-\x7e]"
                        r"[\x20-\x5b\x5d-\x7e]*)?", re.ASCII)


def glean_dropin(text: str) -> "str | None":
    """The drop-in for one of glean's units (its text given): after the agent, and the
    command that runs python-glean extended by $NETINJECT_GLEAN_ARGS (others.py); the
    unit's other ExecStartPre=/ExecStart= lines repeated as they are, since a directive is
    reset as a whole. None when the unit is not one this can follow (no python-glean
    line, more than one, or a line this parser does not take: continuations, non-ASCII)."""
    section = ""
    lines: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        if section != "[Service]" or not line.startswith("Exec"):
            continue
        m = _EXEC_LINE.fullmatch(line)
        if m is None:
            if line.split("=", 1)[0].strip() in ("ExecStartPre", "ExecStart"):
                return None
            continue
        key, value = m.group(1), (m.group(2) or "").rstrip()
        if value:
            lines.setdefault(key, []).append(value)
        else:
            lines[key] = []  # (an empty assignment resets the list)
    runs = [(key, i) for key, values in lines.items() for i, v in enumerate(values)
            if v.split()[0].lstrip("-@:+!").rsplit("/", 1)[-1] == "python-glean"]
    if len(runs) != 1:
        return None
    key = runs[0][0]
    out = ["# Installed by netinject-guest install: glean runs after netinject's agent, and",
           "# with --skip-network on an instance whose config the agent installed (the",
           "# agent writes /%s then; netinject-guest uninstall removes this file)." % GLEAN_ENV,
           "[Unit]", "After=netinject.service", "", "[Service]",
           "EnvironmentFile=-/%s" % GLEAN_ENV, "%s=" % key]
    out += ["%s=%s%s" % (key, v, " $%s" % GLEAN_VAR if i == runs[0][1] else "")
            for i, v in enumerate(lines[key])]
    return "\n".join(out) + "\n"


def glean_dropins(tree: ImageTree, out: "Callable[[str], None]") -> "list[tuple[str, str]]":
    """(path, text) of the drop-in of each glean unit the image has (GLEAN_UNITS)."""
    found = []
    for unit in GLEAN_UNITS:
        text = next((x for x in (tree.read_text(d + "/" + unit) for d in UNIT_DIRS)
                     if x is not None), None)
        if text is None:
            continue
        dropin = glean_dropin(text)
        if dropin is None:
            out("left glean's %s alone: no single python-glean command line this "
                "installer can extend; glean may write its own network config beside "
                "the agent's" % unit)
            continue
        found.append((glean_dropin_path(unit), dropin))
    return found


def precompile(root: str, out: "Callable[[str], None]") -> "bytes | None":
    """The installed module byte-compiled, so no boot pays for compiling it; None (and
    why, said) when it does not compile: it then compiles on first use. Compiled into a
    scratch directory on this machine (py_compile writes through whatever directories
    it is given), to be written into the image like any other file."""
    import py_compile
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="netinject-pyc-") as tmp:
            cfile = tmp + "/netinject_guest.pyc"
            py_compile.compile(resolve_in_root(root, MODULE_PATH), cfile=cfile,
                               dfile="/" + MODULE_PATH, doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
            with open(cfile, "rb") as fh:
                return fh.read()
    except (OSError, py_compile.PyCompileError) as exc:
        out("could not precompile the agent (%s); it compiles on first use" % exc)
        return None


def install_agent(root: str, out: "Callable[[str], None]", agent_source: bytes,
                  launcher_source: bytes, stack: "str | None" = None) -> int:
    """Install the boot service into the image tree at ``root``: the joined agent module
    (``agent_source``), its launcher, the systemd unit and the rcS script, and record the
    image's network stack (``stack``, else detected) for the agent. Returns 2, says why
    on stderr and installs nothing when no stack is given and none is found, or when the
    image cannot take one of the files (see _placed)."""
    try:
        _is_tree(root)
        return _install(root, out, agent_source, launcher_source, stack)
    except (AgentError, OSError, UnicodeError) as exc:
        sys.stderr.write("netinject-guest install: error: %s\n" % exc)
        return 2


def _is_tree(root: str) -> None:
    """AgentError unless ``root`` is a directory or not there yet (install makes it)."""
    if lexists(root) and not isdir(root):
        raise AgentError("--root %s is not a directory" % root)


def _install(r: str, out: "Callable[[str], None]", agent_source: bytes,
             launcher_source: bytes, stack: "str | None") -> int:
    if stack is None:
        found, why = detect_stack(r)
        if found is None:
            sys.stderr.write("netinject-guest install: error: cannot tell this image's "
                             "network stack (%s); give --stack (one of %s)\n"
                             % (why, ", ".join(STACK_NAMES)))
            return 2
        out("network stack: %s (%s)" % (found.name, why))
    elif stack not in STACK_NAMES:
        sys.stderr.write("netinject-guest install: error: --stack %r: choose one of %s\n"
                         % (stack, ", ".join(STACK_NAMES)))
        return 2
    else:
        found = stack_named(stack)
        out("network stack: %s (given)" % stack)
    tree = ImageTree(r)
    systemd = tree.uses_systemd()
    announcer = systemd and found.announces
    fixed = generator_fix(tree)
    pyc = _pyc_path(r)
    glean = glean_dropins(tree, out) if systemd else []
    files = [MODULE_PATH, LAUNCHER_PATH, UNIT_PATH, INIT_PATH, STACK_CONFIG]
    files += [path for path, _ in glean]
    files += [ANNOUNCE_UNIT_PATH] if announcer else []
    files += [GENERATOR_OVERRIDE] if fixed is not None else []
    files += [pyc] if pyc is not None else []
    files += [path for path, _, _ in SYNC_FILES] if systemd else []
    links = [WANTS_LINK, SYNC_TIMER_LINK] + ([ANNOUNCE_WANTS_LINK] if announcer else []) \
        if systemd else [RCS_LINK]
    for rel in files:
        _placed(r, rel)
    for rel in links:
        _placed(r, rel, staged=False)
    state = resolve_in_root(r, STATE_DIR + "/backup")
    if lexists(state) and not isdir(state):
        raise AgentError("/%s/backup is in the way (not a directory)" % STATE_DIR)
    write_atomic(r, MODULE_PATH, agent_source, 0o644)
    compiled = precompile(r, out) if pyc is not None else None
    if pyc is not None and compiled is not None:
        write_atomic(r, pyc, compiled, 0o644)
    write_atomic(r, LAUNCHER_PATH, launcher_source, 0o755)
    write_atomic(r, UNIT_PATH, UNIT.encode(), 0o644)
    write_atomic(r, INIT_PATH, INIT_SCRIPT.encode(), 0o755)
    write_atomic(r, STACK_CONFIG, (found.name + "\n").encode(), 0o644)
    # The state and backup directories exist before the first boot: two mkdirs fewer on
    # the boot path.
    makedirs(state, 0o700)
    out("installed /%s, /%s, /%s, /%s" % (MODULE_PATH, LAUNCHER_PATH, UNIT_PATH, INIT_PATH))
    if compiled is not None:
        out("precompiled /%s" % pyc)
    elif pyc is None:
        out("not precompiled: the image's Python is not this installer's %d.%d; the agent "
            "compiles on its first boot (then without real-time priority). Run the install "
            "with the image's own python3 (in a chroot, as the .deb and the "
            "diskimage-builder element do) to precompile it" % sys.version_info[:2])
    if systemd:
        _symlink(r, "/" + UNIT_PATH, WANTS_LINK)
        out("enabled %s (systemd)" % UNIT_NAME)
        if announcer:
            write_atomic(r, ANNOUNCE_UNIT_PATH, ANNOUNCE_UNIT.encode(), 0o644)
            _symlink(r, "/" + ANNOUNCE_UNIT_PATH, ANNOUNCE_WANTS_LINK)
            out("enabled %s (systemd-networkd sends no gratuitous ARP)"
                % ANNOUNCE_UNIT_NAME)
        for path, text, mode in SYNC_FILES:
            write_atomic(r, path, text.encode(), mode)
        _symlink(r, "/" + SYNC_TIMER_PATH, SYNC_TIMER_LINK)
        out("enabled %s (every %d s; /%s), and udev's add and remove of a NIC start %s, %s"
            % (SYNC_TIMER_NAME, SYNC_PERIOD, SYNC_CONF, SYNC_ADD_NAME, SYNC_REMOVE_NAME))
        for path, text in glean:
            write_atomic(r, path, text.encode("ascii"), 0o644)
            out("glean runs after the agent, without its network part on an instance the "
                "agent configured (/%s)" % path)
    else:
        # insserv orders rcS by the LSB header; with --root we place the link ourselves
        # at the front of rcS (X-Start-Before: networking holds trivially).
        _symlink(r, "../init.d/netinject", RCS_LINK)
        out("enabled /%s (sysvinit rcS)" % RCS_LINK)
        out("no sync triggers (they are systemd units): run 'netinject-guest sync' "
            "from cron for drift")
    if fixed is not None:
        write_atomic(r, GENERATOR_OVERRIDE, fixed, 0o644)
        out("applied the KVM persistent-net fix in /%s" % GENERATOR_OVERRIDE)
    return 0


def uninstall_agent(root: str, out: "Callable[[str], None]") -> int:
    """Remove what install added. Only names inside the image are removed (each looked up
    in it, the name itself not followed); a name the guest could not reach (behind a
    loop or a link to nothing) holds nothing of ours and is skipped, saying so. Returns
    2 and says why on stderr on an error."""
    try:
        _is_tree(root)
        return _uninstall(root, out)
    except (AgentError, OSError, UnicodeError) as exc:
        sys.stderr.write("netinject-guest uninstall: error: %s\n" % exc)
        return 2


def _uninstall(root: str, out: "Callable[[str], None]") -> int:
    tree = ImageTree(root)
    cache = dirname(MODULE_PATH) + "/__pycache__"
    where = tree.at(cache)
    names = sorted(os.listdir(where)) if where is not None and isdir(where) else []
    ours = [WANTS_LINK, ANNOUNCE_WANTS_LINK, SYNC_TIMER_LINK, RCS_LINK, UNIT_PATH,
            ANNOUNCE_UNIT_PATH, INIT_PATH, LAUNCHER_PATH, MODULE_PATH, STACK_CONFIG,
            *(rel for _, rel in SWITCHES)]
    ours += [glean_dropin_path(u) for u in GLEAN_UNITS]
    ours += [path for path, _, _ in SYNC_FILES]
    ours += [cache + "/" + f for f in names if f.startswith("netinject_guest.")]
    if 'GOTO="globally_administered_whitelist"' in (tree.read_text(GENERATOR_OVERRIDE)
                                                    or ""):
        ours.append(GENERATOR_OVERRIDE)
    for rel in ours:
        try:
            path = resolve_in_root(root, rel, follow_last=False)
        except AgentError as exc:
            out("skipped /%s: %s" % (rel, exc))
            continue
        kind = _kind(path)
        if kind in ("file", "symlink"):
            os.unlink(path)
            out("removed /%s" % rel)
        elif kind != "absent":
            out("left /%s: a %s, not what install made" % (rel, kind))
    # Directories go only when empty: recorded state and backups of a booted image stay.
    for d in (cache, dirname(MODULE_PATH), dirname(STACK_CONFIG), STATE_DIR + "/backup",
              STATE_DIR, *(dirname(glean_dropin_path(u)) for u in GLEAN_UNITS)):
        try:
            os.rmdir(resolve_in_root(root, d, follow_last=False))
        except (OSError, AgentError):
            pass
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
            i.add_argument("--stack", choices=STACK_NAMES,
                           help="the image's network stack, whose files the agent installs "
                                "(default: detected: netplan, ifupdown with networking "
                                "enabled, NetworkManager, systemd-networkd, in that order)")
    args = p.parse_args(argv)

    def say(text: str) -> None:
        # (A name from the image may not be UTF-8: shown escaped, not a traceback.)
        print(text.encode("utf-8", "backslashreplace").decode("utf-8"))

    if args.cmd == "install":
        return install_agent(args.root, say, agent_source, launcher_source, args.stack)
    return uninstall_agent(args.root, say)
