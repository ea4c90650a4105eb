"""The boot service (``netinject-guest run``) and the agent's command line.

``run`` finds the config drive, verifies its manifest and origin, and on the instance's
first boot installs the files and renames NICs; the instance uuid is recorded last, so
a crash midway re-runs on the next boot. It never blocks or breaks boot: on any problem
it changes nothing (or rolls back what it changed), logs why, and exits 0 so the image's
own DHCP configuration applies. Its last line is the result line (contract.Outcome).
Every path goes through ``--root`` (and ``--sysfs``, ``--dev``) so tests run it against a
directory tree shaped like a guest.
"""

import os
import sys

from .announce import announce, write_announce
from .contract import (
    BUNDLE_MAX,
    MANIFEST_NAMES,
    STATE_FILE,
    VERSION,
    AgentError,
    Manifest,
    NoPayload,
    Outcome,
    fat_uuid,
    format_result,
    format_state,
    manifest_instance,
    parse_state,
    verify,
)
from .discovery import (
    DEFAULT_WAIT,
    Drive,
    check_origin,
    find_drive,
    probe_by_label,
    probe_label,
    read_payload,
)
from .install import (
    AgentLock,
    Backup,
    InstallFailed,
    install,
    remove_stale,
    restore,
    write_new,
)
from .live import record_applied
from .log import Log
from .metadata import (
    FETCH_TIMEOUT,
    METADATA_URL,
    WAIT_FOR_MAC,
    SyncArgs,
    parse_mac_arg,
    parse_metadata_url,
    parse_nic_arg,
    sync_main,
)
from .nics import rename_nics
from .others import give_others_back, step_others_aside
from .paths import join, no_symlink_parents, read_small, relative_to
from .stacks import Stack, read_stack
from .txn import LIVE_LOCK_WAIT, apply, apply_status, read_input

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

BY_UUID = "/dev/disk/by-uuid/"
BOOT_LOCK_WAIT = 20.0  # (a live change holds the lock seconds at most)
NO_FAST_PATH = "-"


class RunArgs:
    """``run``'s options (parse_run_args)."""

    def __init__(self, root: str = "/", sysfs: "str | None" = None,
                 dev: "str | None" = None, drive: "str | None" = None,
                 wait: float = DEFAULT_WAIT, quiet: bool = False) -> None:
        self.root = root
        self.sysfs = sysfs or join(root, "sys")
        self.dev = dev or join(root, "dev")
        self.drive = drive
        self.wait = wait
        self.quiet = quiet


RUN_USAGE = """\
usage: netinject-guest run [--root DIR] [--sysfs DIR] [--dev DIR] [--drive DEVICE]
                           [--wait SECONDS] [--quiet]

The boot service: install the static network config injected on the config drive
(label config-2) on the instance's first boot, before the network service starts.
Always exits 0 (on any problem the image's own config applies), but for usage errors.

  --root DIR        guest root (default /)
  --sysfs DIR       sysfs to read (default ROOT/sys)
  --dev DIR         device directory (default ROOT/dev)
  --drive DEVICE    read this device or image instead of searching
  --wait SECONDS    seconds to wait for the drive to appear (default %s)
  --quiet           log to the file only
""" % DEFAULT_WAIT

_RUN_VALUES = ("--root", "--sysfs", "--dev", "--drive", "--wait")


def parse_run_args(argv: "list[str]") -> RunArgs:
    """``run``'s one parser (argv without 'run'), small on purpose: argparse costs tens of
    ms to import under emulation, on every boot. ValueError with a usage message."""
    values: dict[str, str] = {}
    quiet = False
    i = 0
    while i < len(argv):
        key, eq, value = argv[i].partition("=")
        if key == "--quiet" and not eq:
            quiet = True
        elif key in _RUN_VALUES:
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError("%s needs a value" % key)
                i += 1
                value = argv[i]
            values[key] = value
        else:
            raise ValueError("unknown option %r" % argv[i])
        i += 1
    try:
        wait = float(values.get("--wait", DEFAULT_WAIT))
    except ValueError:
        raise ValueError("--wait: %r is not a number of seconds"
                         % values["--wait"]) from None
    if not 0 <= wait <= 600:
        raise ValueError("--wait: %s is not between 0 and 600 seconds" % wait)
    return RunArgs(values.get("--root", "/"), values.get("--sysfs"), values.get("--dev"),
                   values.get("--drive"), wait, quiet)


class Result:
    """What the run came to (contract.Outcome), why, and fields for the result line."""

    def __init__(self, outcome: str, message: str = "", **fields: object) -> None:
        self.outcome = outcome
        self.message = message
        self.fields = fields


def priority_note() -> str:
    """' (real-time priority, bounded)' when the launcher got it for this boot run."""
    try:
        policy = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK
    except (AttributeError, OSError):
        return ""
    return " (real-time priority, bounded)" if policy == os.SCHED_FIFO else ""


def read_state(root: str) -> "list[str]":
    """The state file's fields (see the contract): one small file, one read."""
    try:
        no_symlink_parents(root, STATE_FILE)
        return parse_state(read_small(join(root, STATE_FILE)))
    except (OSError, AgentError):
        return []


def later_boot(state: "list[str]", found: Drive) -> "str | None":
    """Why this is not the first boot of the instance whose config is in place, or None.
    The one place that decides (the launcher only looks for the link record_state
    left). Same drive as the boot that applied it (its id names it: netinject's drives;
    nova's iso9660 ones have none), or a drive whose manifest names the recorded
    instance: nothing is new. Reads only the manifest's head, never the whole payload."""
    if not state:
        return None
    if found.volume_id and state[1:2] == [found.ident]:
        return "drive %s on %s" % (found.ident, found.path)
    head = read_payload(found, MANIFEST_NAMES)
    raw = head.get(MANIFEST_NAMES[0]) or head.get(MANIFEST_NAMES[1]) or b""
    if manifest_instance(raw) == state[0]:
        return "its manifest names instance %s" % state[0]
    return None


def fast_path(found: Drive) -> str:
    """What tells the launcher, on a later boot, that this drive is still there without
    loading the agent: udev's /dev/disk/by-uuid link of a vfat drive (blkid's UUID of
    its serial, which netinject derives from the instance uuid). None for iso9660."""
    return BY_UUID + fat_uuid(found.volume_id) if found.kind == "vfat" else NO_FAST_PATH


def record_state(root: str, uuid: str, found: Drive) -> None:
    """Record the applied instance, last: if a crash loses it, the next boot simply
    applies the same files again (idempotent; the backups already exist). Not fsynced
    for the same reason."""
    path = join(root, STATE_FILE)
    no_symlink_parents(root, STATE_FILE)
    remove_stale(path + ".tmp")
    write_new(path + ".tmp", format_state(uuid, found.ident, "/" + relative_to(
        root, found.path), fast_path(found)).encode(), 0o644)
    os.rename(path + ".tmp", path)


def find(args: RunArgs) -> "Drive | None":
    if args.drive:
        return probe_label(args.drive)
    return probe_by_label(args.dev) or find_drive(args.sysfs, args.dev, args.wait)


def first_boot(args: RunArgs, found: Drive, log: Log) -> Result:
    """Everything after the drive was found: decide, verify, install, rename, record."""
    state = read_state(args.root)
    log("config drive %s (%s, label %s%s)" % (
        found.path, found.kind, found.label or "-",
        ", volume %s" % found.volume_id if found.volume_id else ""))
    why = later_boot(state, found)
    if why is not None:
        log("not the first boot of instance %s (%s): nothing to do" % (state[0], why))
        return Result(Outcome.UNCHANGED, "not the first boot", instance=state[0])
    manifest = verify(read_payload(found))
    log("manifest ok: instance %s, %d file(s), %d NIC(s)"
        % (manifest.uuid, len(manifest.entries), len(manifest.nics)))
    check_origin(args.sysfs, found, manifest.uuid)
    log("first boot of instance %s" % manifest.uuid)
    stack = read_stack(args.root)
    manifest = manifest.for_stack(stack)
    log("network stack: %s (%d file(s) for it and for every stack)"
        % (stack.name, len(manifest.entries)))
    aside = stack.aside(args.root, set(e.path for e in manifest.entries), log)
    lock = AgentLock(args.root, BOOT_LOCK_WAIT)  # (no live change meanwhile)
    try:
        return install_first_boot(args, found, stack, manifest, aside, log)
    finally:
        lock.close()


def install_first_boot(args: RunArgs, found: Drive, stack: Stack, manifest: Manifest,
                       aside: "list[str]", log: Log) -> Result:
    """Install the drive's verified payload for the image's stack (moving ``aside`` the
    image's files that would override it), rename the NICs, record the instance."""
    backup = install(args.root, manifest, log, remove=aside)
    count = take_effect(args, stack, manifest, backup, log)
    if stack.announces:
        try:
            n = write_announce(args.root, manifest)
            if n:
                log("%d IPv4 address(es) left for netinject-announce" % n)
        except (OSError, AgentError) as exc:  # the config is in place: go on
            log("could not leave the addresses to announce: %s" % exc)
    try:
        record_applied(args.root, manifest)  # what a live change later compares with
    except (OSError, AgentError) as exc:
        log("could not record the applied manifest: %s" % exc)
    record_state(args.root, manifest.uuid, found)
    log("done: %d file(s) installed, %d NIC(s) renamed (cpu %.1f ms)"
        % (backup.installed, count, log.cpu_ms()))
    return Result(Outcome.INSTALLED, instance=manifest.uuid, files=backup.installed,
                  nics_renamed=count)


def take_effect(args: RunArgs, stack: Stack, manifest: Manifest, backup: Backup,
                log: Log) -> int:
    """Rename the NICs and run what the stack needs (stack.commit); on failure roll the
    files back (and commit the image's own again) and raise InstallFailed. Returns how
    many NICs were renamed."""
    try:
        count = rename_nics(manifest.nics, args.sysfs, log)
        stack.commit(args.root, log)
        return count
    except AgentError as exc:
        log("rolling back installed files")
        failed = restore(args.root, backup, backup.changed, log)
        try:
            stack.commit(args.root, log)  # the image's own config again
        except AgentError as cexc:
            log("after the rollback: %s" % cexc)
        raise InstallFailed("%s%s" % (exc, "; rollback FAILED for /%s" % ", /".join(failed)
                                      if failed else "; every file is as it was"),
                            bool(failed)) from None


def run(args: RunArgs, started: "float | None" = None,
        cpu_started: "float | None" = None) -> int:
    """The boot service. Always returns 0: boot goes on whatever happens here.

    ``started``, ``cpu_started``: time.monotonic() and time.process_time() when the
    launcher began (the interpreter is up), so the log's timings include loading this
    module; else they start here.
    """
    log = Log(args.root, args.quiet, started, cpu_started)
    if started is not None:
        log("netinject-guest %s loaded%s" % (VERSION, priority_note()))
    found: Drive | None = None
    result = Result(Outcome.STEPPED_ASIDE)
    try:
        found = find(args)
        if found is None:
            log("no config drive (label config-2) found: leaving the image's network "
                "config in place")
            result = Result(Outcome.NO_DRIVE, "no config drive")
        else:
            result = first_boot(args, found, log)
    except NoPayload as exc:
        log("%s: leaving the image's network config in place" % exc)
        result = Result(Outcome.NO_PAYLOAD, str(exc))
    except InstallFailed as exc:
        log("stepping aside: %s" % exc)
        result = Result(Outcome.BROKEN if exc.broken else Outcome.ROLLED_BACK, str(exc))
    except AgentError as exc:
        log("stepping aside: %s" % exc)
        result = Result(Outcome.STEPPED_ASIDE, str(exc))
    except Exception as exc:  # never break boot, whatever went wrong
        log("stepping aside after an unexpected error: %s: %s" % (type(exc).__name__, exc))
        result = Result(Outcome.STEPPED_ASIDE, "unexpected %s" % type(exc).__name__)
    finally:
        if found is not None:
            found.close()
        if result.outcome == Outcome.INSTALLED:
            step_others_aside(args.root, str(result.fields.get("instance")), log)
        elif result.outcome != Outcome.UNCHANGED:  # (unchanged: this instance's later boot)
            give_others_back(args.root, log)
        log.lines.append(format_result(result.outcome, log.elapsed_ms(), log.cpu_ms(),
                                       result.message, result.fields))
        log.flush()
    return 0


def _apply_main(cmd: str, root: str, sysfs: "str | None", txid: str,
                lock_wait: float) -> int:
    """apply / apply-status: the transaction's result line on stdout, its exit status."""
    log = Log(root, quiet=True)
    sysfs = sysfs or join(root, "sys")
    try:
        if cmd == "apply":
            ended = apply(root, sysfs, txid, read_input(0, BUNDLE_MAX), log, lock_wait)
        else:
            ended = apply_status(root, txid, log, lock_wait)
        line, status = ended.line, ended.status
    except (OSError, AgentError) as exc:
        # The transaction could not even be looked at: whether its files changed is
        # not known here (the host reads them back).
        line = format_result(Outcome.BROKEN, message="%s failed: %s" % (cmd, exc),
                             fields={"txid": txid})
        status = 3
        log(line)
    finally:
        log.flush()
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # the host's end is gone: the outcome is recorded for apply-status
    return status


def main(argv: "list[str] | None" = None, started: "float | None" = None,
         cpu_started: "float | None" = None) -> int:
    """``started``, ``cpu_started``: time.monotonic() and time.process_time() when the
    launcher began, for the run log."""
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["run"]:
        if any(a in ("-h", "--help") for a in args_list[1:]):
            sys.stdout.write(RUN_USAGE)
            return 0
        try:
            run_args = parse_run_args(args_list[1:])
        except ValueError as exc:
            sys.stderr.write(RUN_USAGE.split("\n\n")[0] + "\n"
                             "netinject-guest run: error: %s\n" % exc)
            return 2
        return run(run_args, started, cpu_started)
    return _other_commands(args_list)


def _seconds(text: str) -> float:
    """A duration on the command line: a finite number of seconds, 0 to 3600."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:  # (also false for nan)
        raise argparse.ArgumentTypeError("%r is not a number of seconds from 0 to 3600"
                                         % text)
    return value


def _checked(parse: "Callable[[str], str]") -> "Callable[[str], str]":
    """An argparse type from one of metadata.py's parsers (its ValueError's words are
    the message: argparse adds the option's name)."""
    import argparse

    def check(text: str) -> str:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return check


def _other_commands(args_list: "list[str]") -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="netinject-guest",
        description="netinject's guest agent: installs the static network config injected "
                    "on the config drive, before the guest's network service starts.",
        epilog="The bundle (netinject-guest.pyz) also takes 'install --root IMAGE' and "
               "'uninstall --root IMAGE' to add the boot service to an image or remove it.")
    p.add_argument("--version", action="version", version="netinject-guest " + VERSION)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    # 'run' is parsed by parse_run_args (main); listed here for the help only.
    sub.add_parser("run", help="the boot service (always exits 0; run --help)",
                   add_help=False)
    for name, helptext in (("apply", "install a bundle from stdin as one transaction "
                                     "(NIC hot-plug; exit 0 applied, 1 unchanged, 3 broken)"),
                           ("apply-status", "the outcome of a transaction; fences it off if "
                                            "it has not run")):
        ap = sub.add_parser(name, help=helptext)
        ap.add_argument("--txid", required=True, help="transaction id (letters, digits)")
        ap.add_argument("--root", default="/", help="guest root (default /)")
        ap.add_argument("--sysfs", help="sysfs to read (default ROOT/sys)")
        ap.add_argument("--lock-wait", type=_seconds, default=LIVE_LOCK_WAIT,
                        metavar="SECONDS",
                        help="how long to wait for another netinject run (a boot-time "
                             "install, another live change) to finish (default %(default)s)")
    sy = sub.add_parser(
        "sync", help="take the current config from nova's metadata API (a hot-plugged or "
                     "removed NIC, a Neutron change) and apply it as one transaction "
                     "(exit 0 applied, 1 unchanged, 3 broken)",
        description="Fetch METADATA-URL/openstack/latest/vendor_data2.json, check its "
                    "'netinject' payload as the config drive's is (hashes, allowlist, the "
                    "instance uuid against this machine's SMBIOS uuid) and apply it as "
                    "'apply' does: the changed NICs only, all old or all new. No answer, "
                    "{} or a bad one changes nothing. Only after a first boot netinject "
                    "configured from the drive.")
    sy.add_argument("--root", default="/", help="guest root (default /); with a root "
                    "other than /, files only: nothing is brought up or down")
    sy.add_argument("--sysfs", help="sysfs to read (default ROOT/sys)")
    sy.add_argument("--metadata-url", type=_checked(parse_metadata_url),
                    default=METADATA_URL, metavar="URL",
                    help="http://HOST[:PORT] of the metadata API (default %(default)s)")
    sy.add_argument("--timeout", type=_seconds, default=FETCH_TIMEOUT, metavar="SECONDS",
                    help="to connect, and for each read (nova's own for its vendordata "
                         "targets); the whole answer within twice that (default "
                         "%(default)s)")
    sy.add_argument("--dry-run", action="store_true",
                    help="print what would change (files; each NIC's addresses, routes, "
                         "DNS, MTU, old -> new) and change nothing (exit 0 when an "
                         "answer was read)")
    sy.add_argument("--lock-wait", type=_seconds, default=LIVE_LOCK_WAIT,
                    metavar="SECONDS", help="how long to wait for another netinject run "
                    "(default %(default)s)")
    sy.add_argument("--mac", action="append", type=_checked(parse_mac_arg), default=[],
                    help="a NIC that appeared (udev add): ask again until the answer "
                         "carries this MAC (repeatable)")
    sy.add_argument("--removed", action="append", type=_checked(parse_nic_arg), default=[],
                    metavar="NAME", help="a NIC that went (udev remove): ask again until "
                    "the answer no longer carries it, then remove its files and udev "
                    "rule (repeatable)")
    sy.add_argument("--wait-for-mac", type=_seconds, default=WAIT_FOR_MAC,
                    metavar="SECONDS", help="how long to ask again for --mac/--removed "
                    "(default %(default)s)")
    an = sub.add_parser("announce", help="announce the injected IPv4 addresses once they "
                                         "are up (netinject-announce.service)")
    an.add_argument("--root", default="/", help="guest root (default /)")
    an.add_argument("--wait", type=float, default=60.0,
                    help="seconds to wait for the addresses (default %(default)s)")
    args = p.parse_args(args_list)
    if args.cmd == "announce":
        log = Log(args.root)
        try:
            announce(args.root, log, args.wait)
        finally:
            log.flush()
        return 0
    if args.cmd == "sync":
        return sync_main(SyncArgs(args.root, args.sysfs, args.metadata_url, args.dry_run,
                                  args.lock_wait, args.mac, args.removed,
                                  args.wait_for_mac, args.timeout))
    if args.cmd in ("apply", "apply-status"):
        return _apply_main(args.cmd, args.root, args.sysfs, args.txid, args.lock_wait)
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
