"""Hot-plug transactions: ``netinject-guest apply`` and ``apply-status``.

The host pipes a bundle (the manifest and the files it lists) into ``netinject-guest apply
--txid T`` through qemu-guest-agent's guest-exec. The files are installed with the same
checks, backups and rollback as a first boot (install.py), under a lock, and the
outcome is recorded against T in /var/lib/netinject/apply-status as a result line
(contract.format_result: ``outcome=`` one of contract.Outcome, then the message). If the
host loses the reply (the agent was killed, stopped or restarted), ``apply-status --txid
T`` tells it what happened, and fences T off if it has not run yet: a late-arriving apply
of T then does nothing. So the host always learns the truth and the guest's files are
either all old or all new.

The apply backup (/var/lib/netinject/apply-backup) names its transaction and goes as
soon as that transaction ends, applied or rolled back; one left behind is restored only
if its transaction never ended (interrupted) or ended broken (its rollback failed), and
never followed through a symlink.
"""

import os

from .announce import announce_later
from .contract import (
    STATE_DIR,
    AgentError,
    Manifest,
    NicFacts,
    Outcome,
    exit_status,
    format_result,
    is_plain_name,
    parse_bundle,
    parse_result,
    verify,
)
from .discovery import system_uuid
from .install import (
    TXID_MARK,
    AgentLock,
    Backup,
    InstallFailed,
    install,
    restore,
    write_atomic,
)
from .live import LiveFailed, change, changes_between, read_applied, record_applied, stale_files
from .log import Log
from .paths import isdir, join, lexists, no_symlink_parents, read_small
from .stacks import Changes, Stack, read_stack

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

APPLY_STATUS = STATE_DIR + "/apply-status"
APPLY_BACKUP = STATE_DIR + "/apply-backup"
APPLY_STATUS_KEEP = 32
TXID_MAX = 64
# A live change waits this long for a boot-time install (or another change) to end,
# then is refused (nothing changed): the host asks again.
LIVE_LOCK_WAIT = 10.0


class Ended:
    """A transaction's recorded end: its outcome (contract.Outcome), message and fields,
    and the result line that says so (what apply and apply-status print)."""

    def __init__(self, txid: str, outcome: str, message: str = "", **fields: str) -> None:
        self.txid = txid
        self.outcome = outcome
        self.message = message
        self.fields = fields

    @property
    def line(self) -> str:
        fields: dict[str, object] = {"txid": self.txid}
        fields.update(self.fields)
        return format_result(self.outcome, message=self.message, fields=fields)

    @property
    def status(self) -> int:
        return exit_status(self.outcome)


def read_input(fd: int, limit: int) -> bytes:
    """All of ``fd`` (a bundle on standard input), AgentError past ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise AgentError("input over %d bytes" % limit)
        chunks.append(chunk)


def read_apply_status(root: str) -> "dict[str, Ended]":
    """The recorded ends of the last APPLY_STATUS_KEEP transactions, by txid."""
    try:
        text = read_small(join(root, APPLY_STATUS), 65536).decode("ascii", "replace")
    except OSError:
        return {}
    out = {}
    for line in text.split("\n"):
        fields = parse_result(line)
        if fields is None or not fields.get("txid"):
            continue
        txid, outcome = fields.pop("txid"), fields.pop("outcome")
        out[txid] = Ended(txid, outcome, fields.pop("message", ""), **fields)
    return out


def record(root: str, ended: Ended, log: Log) -> Ended:
    """Record how a transaction ended (the newest APPLY_STATUS_KEEP are kept)."""
    entries = [e for t, e in read_apply_status(root).items() if t != ended.txid]
    entries.append(ended)
    text = "".join(e.line + "\n" for e in entries[-APPLY_STATUS_KEEP:])
    write_atomic(root, APPLY_STATUS, text.encode("ascii", "replace"), 0o600)
    log("transaction %s: %s%s" % (ended.txid, ended.outcome,
                                   ": " + ended.message if ended.message else ""))
    return ended


def _backup_dir(root: str) -> str:
    """/var/lib/netinject/apply-backup; AgentError if it, or a directory on the way, is
    a symlink: recovery would restore files from wherever it points, and dropping the
    backup would delete there."""
    no_symlink_parents(root, APPLY_BACKUP + "/x")
    return join(root, APPLY_BACKUP)


def drop_backup(root: str) -> None:
    """Remove the apply backup: its entries, then its transaction marks (so that a
    removal cut short still names its transaction), then the directory."""
    directory = _backup_dir(root)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in sorted(names, key=lambda n: n.startswith(TXID_MARK)):
        os.unlink(join(directory, name))
    try:
        os.rmdir(directory)
    except OSError:
        pass


def recover(root: str, log: Log, known: "dict[str, Ended]") -> "str | None":
    """Deal with an apply backup an earlier transaction left. Restore it only if its
    transaction did not end (interrupted: nothing recorded) or ended broken (its
    rollback failed); the backup of a transaction that ended otherwise is stale and is
    dropped without restoring anything (its originals may be older than what is there
    now). A backup that names no transaction is refused, not guessed at.

    Returns None when no backup is left, else why the backup cannot be dealt with (its
    files could not be restored): no new transaction may start over it."""
    try:
        directory = _backup_dir(root)
    except AgentError as exc:
        return str(exc)
    if not lexists(directory):
        return None
    if not isdir(directory):
        return "%s is not a directory" % directory
    backup = Backup(root, "", directory)
    if len(backup.marked) != 1:
        if backup.index:
            return ("%s holds a backup that names %s transaction: not restoring it "
                    "blindly (inspect it, then remove it)"
                    % (directory, "no" if not backup.marked else "more than one"))
        log("removed an apply backup with nothing to restore")
        drop_backup(root)
        return None
    txid = backup.marked[0]
    ended = known.get(txid)
    if ended is not None and ended.outcome != Outcome.BROKEN:
        log("dropped the backup of transaction %s, which ended (%s): nothing restored"
            % (txid, ended.outcome))
        drop_backup(root)
        return None
    failed = restore(root, backup, list(backup.index), log)
    why = "interrupted" if ended is None else "its rollback failed"
    if failed:
        record(root, Ended(txid, Outcome.BROKEN, "%s; restoring /%s failed again"
                           % (why, ", /".join(failed))), log)
        return "the files of transaction %s could not be restored (/%s)" % (
            txid, ", /".join(failed))
    drop_backup(root)
    log("rolled back %s apply of transaction %s (%d file(s))"
        % ("an interrupted" if ended is None else "a broken", txid, len(backup.index)))
    try:
        record(root, Ended(txid, Outcome.ROLLED_BACK,
                           "%s, then rolled back by a later transaction" % why), log)
    except (OSError, AgentError) as exc:
        log("could not record the outcome of %s: %s" % (txid, exc))
    return None


def transaction(root: str, txid: str, log: Log, body: "Callable[[], Ended]",
                lock_wait: float = LIVE_LOCK_WAIT) -> Ended:
    """Run ``body`` under the apply lock (waiting ``lock_wait`` seconds at most for it)
    unless transaction ``txid`` already ended (its recorded end is then the answer),
    after dealing with a backup an earlier transaction left (which may end ``txid``
    itself: an interrupted ``txid`` rolled back)."""
    if not (is_plain_name(txid) and len(txid) <= TXID_MAX):
        return Ended("-", Outcome.UNCHANGED, "refused: bad transaction id")
    try:
        lock = AgentLock(root, lock_wait)
    except AgentError as exc:  # (not recorded: recording needs the lock)
        return Ended(txid, Outcome.BUSY, str(exc))
    try:
        known = read_apply_status(root)
        blocked = None
        if txid not in known or known[txid].outcome == Outcome.BROKEN:
            blocked = recover(root, log, known)
            known = read_apply_status(root)
        if txid in known:
            log("transaction %s already ended: %s" % (txid, known[txid].outcome))
            return known[txid]
        if blocked is not None:
            return _record_quietly(root, Ended(txid, Outcome.UNCHANGED, "refused: "
                                               + blocked), log)
        return body()
    finally:
        lock.close()


def _record_quietly(root: str, ended: Ended, log: Log) -> Ended:
    """record(), where failing to record (a full disk) changes nothing: the reply tells
    the host, and the files are as they were."""
    try:
        return record(root, ended, log)
    except (OSError, AgentError) as exc:
        log("could not record the outcome of %s: %s" % (ended.txid, exc))
        return ended


def apply(root: str, sysfs: str, txid: str, raw: bytes, log: Log,
          lock_wait: float = LIVE_LOCK_WAIT) -> Ended:
    """Install a bundle as one transaction, and bring the NICs it changes up (live.py);
    how it ended (also recorded for ``txid``). Under ``--root`` (a tree, in tests) the
    files only: nothing of the host's is brought up or down."""
    return apply_from(root, sysfs, txid, lambda: parse_bundle(raw), log, lock_wait)


def apply_from(root: str, sysfs: str, txid: str, source: "Callable[[], dict[str, bytes]]",
               log: Log, lock_wait: float = LIVE_LOCK_WAIT,
               want: "Callable[[Manifest], None] | None" = None,
               record_unchanged: bool = True) -> Ended:
    """The one live transaction, for a payload from ``source`` (a bundle on stdin, or
    nova's metadata answer: ``netinject-guest sync``), called under the lock so that
    what is applied is what is current when nothing else changes the files. ``want``
    may refuse the checked manifest (AgentError: nothing changes). ``record_unchanged``:
    False records only transactions that changed something or tried to (sync: a
    refusal or "nothing to change" leaves every file as it was, the log says why).

    The backup goes as soon as the transaction ends, applied or not: one left behind
    would make the next transaction restore its (by then stale) originals."""
    active = root in ("", "/")

    def unchanged(ended: Ended) -> Ended:
        if record_unchanged:
            return _record_quietly(root, ended, log)
        log("%s: %s" % (ended.outcome, ended.message))
        return ended

    def body() -> Ended:
        try:
            stack, manifest, changes, old, stale = prepare(root, sysfs, source(), active,
                                                            want)
        except AgentError as exc:
            return unchanged(Ended(txid, Outcome.UNCHANGED, str(exc)))
        backup_dir = join(root, APPLY_BACKUP)
        try:
            if active:
                backup = change(root, stack, manifest, changes, old, stale, log,
                                backup_dir, txid)
            else:
                backup = install(root, manifest, log, backup_dir=backup_dir, remove=stale,
                                 txid=txid, skip_same=True)
        except (InstallFailed, LiveFailed) as exc:
            if not exc.broken:  # every file is as it was: nothing left to restore
                drop_backup(root)
            # (A failed rollback keeps the backup: the next transaction retries it.)
            return _record_quietly(root, Ended(
                txid, Outcome.BROKEN if exc.broken else Outcome.ROLLED_BACK, str(exc)), log)
        except AgentError as exc:  # refused before anything changed
            drop_backup(root)
            return unchanged(Ended(txid, Outcome.UNCHANGED, str(exc)))
        if not backup.changed and not changes:
            drop_backup(root)
            return unchanged(Ended(txid, Outcome.UNCHANGED, "nothing to change"))
        return _applied(root, stack, manifest, changes, backup, txid, log, active)

    return transaction(root, txid, log, body, lock_wait)


def checked_manifest(sysfs: str, payload: "dict[str, bytes]") -> Manifest:
    """A payload (a bundle's files, nova's vendordata answer) checked exactly as a drive's
    is: the manifest's format, every file's hash and guest path, and its instance equal
    to this machine's SMBIOS uuid; AgentError otherwise. The manifest must say what
    each NIC's config brings up (format 3): live changes compare those facts."""
    manifest = verify(payload)
    system = system_uuid(sysfs)
    if system != manifest.uuid:
        raise AgentError("the payload is for instance %s, not this machine (%s)"
                         % (manifest.uuid, system))
    if manifest.facts is None:
        raise AgentError("the payload's manifest says nothing of its NICs (made by a "
                         "netinject older than this agent): not applied live")
    return manifest


def prepare(root: str, sysfs: str, payload: "dict[str, bytes]", active: bool,
             want: "Callable[[Manifest], None] | None" = None
             ) -> "tuple[Stack, Manifest, Changes, dict[str, NicFacts] | None, list[str]]":
    """Everything decided before anything changes: the payload checked as a drive is, for
    this machine and its stack; which NICs change; this stack's files to move aside;
    whether the stack can take the change now. AgentError: refused, nothing changed.
    Reads only (``netinject-guest sync --dry-run`` shows what it decides)."""
    stack = read_stack(root)
    manifest = checked_manifest(sysfs, payload)
    if want is not None:
        want(manifest)
    manifest = manifest.for_stack(stack)
    assert manifest.facts is not None
    old_raw, old = read_applied(root)
    changes = changes_between(root, old, manifest.facts)
    stale = stale_files(old_raw, manifest, stack)
    if active and changes:
        stack.check_live(root)
    return stack, manifest, changes, old, stale


def _applied(root: str, stack: Stack, manifest: Manifest, changes: Changes,
             backup: Backup, txid: str, log: Log, active: bool) -> Ended:
    """Record a change that went through (the manifest now applied, the outcome); if
    that cannot be recorded, undo the files now and say so (the next transaction would
    otherwise compare against, or restore, the wrong state)."""
    try:
        record_applied(root, manifest)
        ended = record(root, Ended(
            txid, Outcome.APPLIED, "%d file(s) installed; %s" % (backup.installed, changes),
            kept=",".join(backup.kept), added=",".join(changes.added),
            changed=",".join(changes.changed), removed=",".join(changes.removed)), log)
    except (OSError, AgentError) as exc:
        failed = restore(root, backup, backup.changed, log)
        if not failed:
            drop_backup(root)
        return Ended(txid, Outcome.BROKEN if failed or active else Outcome.ROLLED_BACK,
                     "could not record the outcome (%s)%s" % (
                         exc, "; the files are restored but the NICs run the new "
                              "config" if active and not failed else ""))
    drop_backup(root)
    if active and stack.announces:
        announce_later(root, manifest, changes, log)
    return ended


def apply_status(root: str, txid: str, log: Log,
                 lock_wait: float = LIVE_LOCK_WAIT) -> Ended:
    """How transaction ``txid`` ended; if it has not run, fence it off for good."""

    def fence() -> Ended:
        return record(root, Ended(txid, Outcome.FENCED, "never ran, and now never will"),
                      log)

    return transaction(root, txid, log, fence, lock_wait)
