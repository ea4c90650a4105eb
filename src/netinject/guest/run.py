"""The boot service (``netinject-guest run``) and the agent's command line.

``run`` finds the config drive, verifies its manifest and origin, and on the instance's
first boot installs the files and renames NICs; the instance uuid is recorded last, so
a crash midway re-runs on the next boot. It never blocks or breaks boot: on any problem
it changes nothing (or rolls back what it changed), logs why, and exits 0 so the image's
own DHCP configuration applies. Every path goes through ``--root`` (and ``--sysfs``,
``--dev``) so tests run it against a directory tree shaped like a guest.
"""

import posix
import sys

from .contract import (
    APPLY_BROKEN,
    BUNDLE_MAX,
    MANIFEST_NAMES,
    STATE_FILE,
    VERSION,
    AgentError,
    NoPayload,
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
    _read_all,
    _remove_stale,
    _write_plain,
    apply,
    apply_status,
    install,
)
from .log import Log
from .nics import rename_nics
from .paths import join, no_symlink_parents, read_small, relative_to
from .stacks import (
    ANNOUNCING_STACKS,
    announce,
    for_stack,
    netplan_aside,
    netplan_generate,
    read_stack,
    write_announce,
)


def priority_note() -> str:
    """' (real-time priority, bounded)' when the launcher got it for this boot run."""
    try:
        policy = posix.sched_getscheduler(0) & ~posix.SCHED_RESET_ON_FORK
    except (AttributeError, OSError):
        return ""
    return " (real-time priority, bounded)" if policy == posix.SCHED_FIFO else ""


def read_state(root: str) -> "list[str]":
    """The state file's fields (see the contract): one small file, one read."""
    try:
        no_symlink_parents(root, STATE_FILE)
        return parse_state(read_small(join(root, STATE_FILE)))
    except (OSError, AgentError):
        return []


def run(root: str = "/", sysfs: "str | None" = None, dev: "str | None" = None,
        drive: "str | None" = None, wait: float = DEFAULT_WAIT, quiet: bool = False,
        after_each: object = None, started: "float | None" = None,
        cpu_started: "float | None" = None) -> int:
    """The boot service. Always returns 0: boot goes on whatever happens here.

    ``started``: time.monotonic() when the launcher began (the interpreter is up), so the
    log's timings include loading this module; else they start here.
    """
    log = Log(root, quiet, started, cpu_started)
    if started is not None:
        log("netinject-guest %s loaded%s" % (VERSION, priority_note()))
    sysfs = sysfs or join(root, "sys")
    dev = dev or join(root, "dev")
    found: Drive | None = None
    result: dict[str, object] = {"outcome": "stepped-aside"}
    try:
        state = read_state(root)
        recorded = state[0] if state else None
        # (A later boot from a vfat drive udev linked by its serial is decided by the
        # launcher before this module is even loaded.)
        found = probe_label(drive) if drive else (probe_by_label(dev)
                                                   or find_drive(sysfs, dev, wait))
        if found is None:
            log("no config drive (label config-2) found: leaving the image's network "
                "config in place")
            result = {"outcome": "no-drive"}
            return 0
        # (nova's own iso9660 drives have an empty volume set id: no identity there.)
        if recorded is not None and found.volume_id and state[1:2] == [found.ident]:
            # Same drive as the boot that applied it: nothing new (no payload reads).
            log("not the first boot of instance %s (drive %s on %s): nothing to do"
                % (recorded, found.ident, found.path))
            result = {"outcome": "unchanged", "instance": recorded}
            return 0
        log("config drive %s (%s, label %s%s)" % (
            found.path, found.kind, found.label,
            ", volume %s" % found.volume_id if found.volume_id else ""))
        if recorded is not None:
            head = read_payload(found, MANIFEST_NAMES)
            raw = head.get(MANIFEST_NAMES[0]) or head.get(MANIFEST_NAMES[1]) or b""
            if manifest_instance(raw) == recorded:
                log("not the first boot of instance %s: nothing to do" % recorded)
                result = {"outcome": "unchanged", "instance": recorded}
                return 0
        payload = read_payload(found)
        manifest = verify(payload)
        log("manifest ok: instance %s, %d file(s), %d NIC(s)"
            % (manifest.uuid, len(manifest.entries), len(manifest.nics)))
        check_origin(sysfs, found, manifest.uuid)
        if recorded == manifest.uuid:
            log("not the first boot of instance %s: nothing to do" % manifest.uuid)
            result = {"outcome": "unchanged", "instance": recorded}
            return 0
        log("first boot of instance %s" % manifest.uuid)
        stack = read_stack(root)
        manifest = for_stack(manifest, stack)
        aside = netplan_aside(root, manifest) if stack == "netplan" else []
        log("network stack: %s (%d file(s) for it and for every stack)"
            % (stack, len(manifest.entries)))
        backup = install(root, manifest, log, after_each, remove=aside)
        try:
            count = rename_nics(manifest.nics, sysfs, log)
            if stack == "netplan":
                netplan_generate(root, log)
        except AgentError:
            log("rolling back installed files")
            for rel in reversed([e.path for e in manifest.entries] + aside):
                try:
                    backup.restore(root, rel)
                except (OSError, AgentError) as exc:
                    log("rollback of /%s failed: %s" % (rel, exc))
            if stack == "netplan":
                try:
                    netplan_generate(root, log)  # the image's own config again
                except AgentError as exc:
                    log("netplan generate after the rollback: %s" % exc)
            raise
        if stack in ANNOUNCING_STACKS:
            try:
                n = write_announce(root, manifest)
                if n:
                    log("%d IPv4 address(es) left for netinject-announce" % n)
            except (OSError, AgentError) as exc:  # the config is in place: go on
                log("could not leave the addresses to announce: %s" % exc)
        # Recorded last, and not fsynced: if a crash loses it, the next boot simply
        # applies the same files again (idempotent; the backups already exist).
        record = join(root, STATE_FILE)
        no_symlink_parents(root, STATE_FILE)
        _remove_stale(record + ".tmp")
        _write_plain(record + ".tmp", format_state(
            manifest.uuid, found.ident, "/" + relative_to(root, found.path)).encode(), 0o644)
        posix.rename(record + ".tmp", record)
        log("done: %d file(s) installed, %d NIC(s) renamed (cpu %.1f ms)"
            % (backup.installed, count, log.cpu_ms()))
        result = {"outcome": "installed", "instance": manifest.uuid,
                  "files": backup.installed, "nics_renamed": count}
    except NoPayload as exc:
        log("%s: leaving the image's network config in place" % exc)
        result = {"outcome": "no-payload"}
    except AgentError as exc:
        log("stepping aside: %s" % exc)
    except Exception as exc:  # never break boot, whatever went wrong
        log("stepping aside after an unexpected error: %s: %s" % (type(exc).__name__, exc))
    finally:
        if found is not None:
            found.close()
        outcome = str(result.pop("outcome"))
        log.lines.append(format_result(outcome, log.elapsed_ms(), log.cpu_ms(), **result))
        log.flush()
    return 0


def _apply_main(cmd: str, root: str, sysfs: "str | None", txid: str) -> int:
    log = Log(root, quiet=True)
    sysfs = sysfs or join(root, "sys")
    try:
        if cmd == "apply":
            raw = _read_all(0, BUNDLE_MAX)
            # The host sends ifupdown's file; the other stacks would also need their
            # daemon told before the NIC appears (not done yet): change nothing.
            try:
                stack = read_stack(root)
                refuse = None if stack == "ifupdown" else (
                    "NIC hot-plug supports ifupdown images only (this image uses %s)"
                    % stack)
            except AgentError as exc:
                refuse = str(exc)
            status, outcome = apply(root, sysfs, txid, raw, log, refuse)
        else:
            status, outcome = apply_status(root, txid, log)
    except (OSError, AgentError) as exc:
        status, outcome = APPLY_BROKEN, "error: %s" % exc
        log("%s %s: %s" % (cmd, txid, outcome))
    finally:
        log.flush()
    try:
        sys.stdout.write("netinject-%s %s %s\n" % (cmd, txid, outcome))
        sys.stdout.flush()
    except OSError:
        pass  # the host's end is gone: the outcome is recorded for apply-status
    return status


RUN_OPTIONS = {"--root": "root", "--sysfs": "sysfs", "--dev": "dev", "--drive": "drive",
               "--wait": "wait"}


def _fast_run_args(argv: list[str]) -> "dict[str, object] | None":
    """Parse ``run [--opt VALUE]... [--quiet]`` without argparse (it costs tens of ms
    under emulation on the boot path). None for anything else: argparse handles it."""
    if not argv or argv[0] != "run":
        return None
    out: dict[str, object] = {}
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--quiet":
            out["quiet"] = True
            i += 1
            continue
        key, eq, value = arg.partition("=")
        if key not in RUN_OPTIONS:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        if key == "--wait":
            try:
                out["wait"] = float(value)
            except ValueError:
                return None
        else:
            out[RUN_OPTIONS[key]] = value
        i += 1
    return out


def main(argv: "list[str] | None" = None, started: "float | None" = None,
         cpu_started: "float | None" = None) -> int:
    """``started``, ``cpu_started``: time.monotonic() and time.process_time() when the
    launcher began, for the run log."""
    args_list = sys.argv[1:] if argv is None else argv
    fast = _fast_run_args(args_list)
    if fast is not None:
        return run(started=started, cpu_started=cpu_started, **fast)  # type: ignore[arg-type]
    import argparse

    p = argparse.ArgumentParser(
        prog="netinject-guest",
        description="netinject's guest agent: installs the static network config injected "
                    "on the config drive, before the guest's network service starts.",
        epilog="The bundle (netinject-guest.pyz) also takes 'install --root IMAGE' and "
               "'uninstall --root IMAGE' to add the boot service to an image or remove it.")
    p.add_argument("--version", action="version", version="netinject-guest " + VERSION)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    r = sub.add_parser("run", help="the boot service (always exits 0)")
    r.add_argument("--root", default="/", help="guest root (default /)")
    r.add_argument("--sysfs", help="sysfs to read (default ROOT/sys)")
    r.add_argument("--dev", help="device directory (default ROOT/dev)")
    r.add_argument("--drive", help="read this device or image instead of searching")
    r.add_argument("--wait", type=float, default=DEFAULT_WAIT,
                   help="seconds to wait for the drive to appear (default %(default)s)")
    r.add_argument("--quiet", action="store_true", help="log to the file only")
    for name, helptext in (("apply", "install a bundle from stdin as one transaction "
                                     "(NIC hot-plug; exit 0 applied, 1 unchanged, 3 broken)"),
                           ("apply-status", "the outcome of a transaction; fences it off if "
                                            "it has not run")):
        ap = sub.add_parser(name, help=helptext)
        ap.add_argument("--txid", required=True, help="transaction id (letters, digits)")
        ap.add_argument("--root", default="/", help="guest root (default /)")
        ap.add_argument("--sysfs", help="sysfs to read (default ROOT/sys)")
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
    if args.cmd == "run":
        return run(args.root, args.sysfs, args.dev, args.drive, args.wait, args.quiet,
                   started=started, cpu_started=cpu_started)
    if args.cmd in ("apply", "apply-status"):
        return _apply_main(args.cmd, args.root, args.sysfs, args.txid)
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
