"""Installing files as one transaction: first boot (from the drive) and hot-plug
(``apply``, from a bundle on standard input).

Back up the originals (metadata only), write every new file beside its target and fsync
it, then rename them all into place; on failure restore what was already replaced. A
crash at any point leaves either the original or a complete new file at each path, and
the true originals in the backup.
"""

import _stat
import posix

from .contract import (
    APPLY_BROKEN,
    APPLY_OK,
    APPLY_UNCHANGED,
    KEEP_SYMLINKS,
    PRIVATE_DIRS,
    STATE_DIR,
    AgentError,
    Entry,
    Manifest,
    applied_kept,
    applied_outcome,
    is_allowed_path,
    is_plain_name,
    parse_bundle,
    verify,
)
from .discovery import system_uuid
from .log import Log
from .paths import (
    basename,
    dirname,
    isdir,
    join,
    lexists,
    makedirs,
    no_symlink_parents,
    read_small,
    relative_to,
    resolve_in_root,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable


def target_stat(target: str) -> "tuple[str, posix.stat_result | None]":
    """'file', 'symlink' or 'absent' (one lstat) and the lstat result (None when absent);
    AgentError for anything else."""
    try:
        st = posix.lstat(target)
    except FileNotFoundError:
        return "absent", None
    except OSError as exc:
        raise AgentError("cannot look at %s: %s" % (target, posix.strerror(exc.errno or 5))
                         ) from None
    if _stat.S_ISLNK(st.st_mode):
        return "symlink", st
    if _stat.S_ISREG(st.st_mode):
        return "file", st
    raise AgentError("%s exists and is not a regular file" % target)


def _fsync_dir(path: str) -> None:
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_DIRECTORY)
    except OSError:
        return
    try:
        posix.fsync(fd)
    except OSError:
        pass
    finally:
        posix.close(fd)


def _tmp_beside(path: str) -> str:
    """The temporary name a file is staged under, beside its target."""
    return join(dirname(path), ".%s.netinject-tmp" % basename(path))


def _remove_stale(path: str) -> None:
    """Make way for a new file at a name of ours (a staging or temporary name): a regular
    file an interrupted run left is unlinked (only its name: a hard link to an outside
    file leaves that file alone); anything else there is not ours to touch."""
    kind = target_stat(path)[0]
    if kind == "file":
        posix.unlink(path)
    elif kind != "absent":
        raise AgentError("%s is in the way (a %s, not a file netinject left)" % (path, kind))


def _create(path: str, data: bytes, mode: int, owner: "tuple[int, int] | None" = None
            ) -> int:
    """Create ``path`` afresh (O_EXCL|O_NOFOLLOW: never through a symlink or into an
    existing file), write ``data`` with ``mode`` (and ``owner``); the open descriptor,
    for the caller to fsync and close."""
    fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW
                    | posix.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view):]
        if owner is not None:
            posix.fchown(fd, owner[0], owner[1])
        posix.fchmod(fd, mode)
    except OSError:
        posix.close(fd)
        try:
            posix.unlink(path)
        except OSError:
            pass
        raise
    return fd


def write_atomic(root: str, rel: str, data: bytes, mode: int) -> None:
    """Write ``rel`` of the tree at ``root``: beside the target, fsync, rename over it (a
    symlink there is replaced, never followed). Its directory is looked up inside the
    tree as a chroot would (resolve_in_root): a symlinked directory of an image never
    takes the write out of the tree, and missing directories are made inside it. At
    boot the root is '/', where that is the kernel's own lookup."""
    path = resolve_in_root(root, rel, follow_last=False)
    d = dirname(path)
    makedirs(d)
    tmp = _tmp_beside(path)
    _remove_stale(tmp)
    fd = _create(tmp, data, mode)
    try:
        posix.fsync(fd)
    finally:
        posix.close(fd)
    try:
        posix.rename(tmp, path)
    except OSError:
        posix.unlink(tmp)
        raise
    _fsync_dir(d)


TXID_MARK = ".txid-"  # an apply backup's entry naming its transaction (see Backup)


class Backup:
    """Originals of replaced files under /var/lib/netinject/backup/<uuid>/.

    One entry per guest path (``/`` written as ``%``): a hard link to the original file
    (or a copy when /var is another filesystem), a symlink for an original symlink, or
    an empty ``<name>.absent`` marker when there was none. Hard links, symlinks and empty
    markers are metadata only: no data to flush, and the filesystem journal commits them
    before the later renames that replace the originals. A path already backed up is
    never backed up again, so a re-run after a crash keeps the true originals rather
    than our half-installed files.

    A hot-plug transaction's backup also names its transaction (``txid``): an empty
    ``.txid-<T>`` entry, made before any other, so that recovery restores only the
    backup of a transaction that did not end (see _recover). Entries that are not what
    save() makes (a directory, a FIFO put there) are never restored.
    """

    def __init__(self, root: str, uuid: str, directory: "str | None" = None,
                 txid: "str | None" = None) -> None:
        self.root = root
        self.dir = directory or join(root, STATE_DIR, "backup", uuid)
        self.txid = txid
        self.index: dict[str, str] = {}
        self.marked: list[str] = []  # the transactions its .txid- entries name
        self.installed = 0  # how many files the install that made it replaced
        self.kept: list[str] = []  # guest paths that install left as they were (symlinks)
        try:
            names = posix.listdir(self.dir)
            self.made = True
        except OSError:
            names = []
            self.made = False
        for name in names:
            if name.startswith(TXID_MARK):
                self.marked.append(name[len(TXID_MARK):])
                continue
            try:
                mode = posix.lstat(join(self.dir, name)).st_mode
            except OSError:
                continue
            if _stat.S_ISLNK(mode):
                kind = "symlink"
            elif not _stat.S_ISREG(mode):
                continue
            else:
                kind = "absent" if name.endswith(".absent") else "file"
            rel = name[:-len(".absent")] if kind == "absent" else name
            rel = rel.replace("%", "/")
            if is_allowed_path(rel):
                self.index[rel] = kind

    def _entry(self, rel: str) -> str:
        return join(self.dir, rel.replace("/", "%"))

    def save(self, rel: str, target: str, kind: str) -> None:
        """Keep the original of ``target`` (once per path); ``kind`` is target_stat's."""
        if rel in self.index:
            return
        if not self.made:
            makedirs(self.dir, 0o700)
            self.made = True
        if self.txid is not None and self.txid not in self.marked:
            _write_plain(join(self.dir, TXID_MARK + self.txid), b"", 0o600)
            self.marked.append(self.txid)
        entry = self._entry(rel)
        if kind == "symlink":
            posix.symlink(posix.readlink(target), entry)
        elif kind == "file":
            try:
                posix.link(target, entry)
            except OSError:  # another filesystem: a durable copy instead
                with open(target, "rb") as fh:
                    write_atomic(self.root, relative_to(self.root, entry), fh.read(),
                                 posix.stat(target).st_mode & 0o7777)
        else:
            _remove_stale(entry + ".absent")
            _write_plain(entry + ".absent", b"", 0o600)
        self.index[rel] = kind

    def restore(self, root: str, rel: str) -> None:
        kind = self.index.get(rel)
        target = join(root, rel)
        entry = self._entry(rel)
        tmp = join(dirname(target), ".%s.netinject-restore" % basename(target))
        _remove_stale(tmp)
        if kind == "absent":
            if lexists(target):
                posix.unlink(target)
        elif kind == "symlink":
            posix.symlink(posix.readlink(entry), tmp)
            posix.rename(tmp, target)
        elif kind == "file":
            try:
                posix.link(entry, tmp)
                posix.rename(tmp, target)
            except OSError:
                with open(entry, "rb") as fh:
                    write_atomic(root, rel, fh.read(), posix.stat(entry).st_mode & 0o7777)


def _write_plain(path: str, data: bytes, mode: int) -> None:
    posix.close(_create(path, data, mode))


class Target:
    """One file to install: the manifest entry, where it goes, and what is there now
    (kind and lstat), looked at once in the preflight."""

    def __init__(self, entry: Entry, path: str, kind: str,
                 st: "posix.stat_result | None") -> None:
        self.entry = entry
        self.path = path
        self.kind = kind
        self.st = st

    @property
    def private(self) -> bool:
        """In a directory whose stack requires the manifest's mode and root's ownership
        (PRIVATE_DIRS): NetworkManager ignores a keyfile others can read or another user
        owns, netplan warns about a readable YAML. An old file's looser mode there would
        silently leave the guest on DHCP."""
        return self.entry.path.startswith(PRIVATE_DIRS)

    @property
    def mode(self) -> int:
        """A replaced file keeps its mode (0600 stays 0600), except a private one; a new
        one, and a private one, get the manifest's."""
        if self.kind == "file" and self.st is not None and not self.private:
            return self.st.st_mode & 0o7777
        return self.entry.mode

    @property
    def owner(self) -> "tuple[int, int] | None":
        """A replaced file keeps its owner, except a private one, which becomes root's;
        None: a new file, the agent's own (root's at boot)."""
        if self.kind != "file" or self.st is None:
            return None
        return (0, 0) if self.private else (self.st.st_uid, self.st.st_gid)


def stage_files(targets: "list[Target]", staged: list[str], dirs: "set[str]") -> None:
    """Write each file beside its target (appending the temporary path to ``staged``
    once it is created) and make them all durable before any rename. Parent directories
    not in ``dirs`` (those _safe_target found) are created.

    Writeback of every file is started before the first fsync, so the first fsync's
    journal commit carries the blocks of all of them and the later ones find their data
    already on disk: one commit instead of one per file (each commit is a device flush,
    milliseconds under emulation).
    """
    fds: list[int] = []
    try:
        for t in targets:
            d = dirname(t.path)
            if d not in dirs:
                makedirs(d)
                dirs.add(d)
            tmp = _tmp_beside(t.path)
            _remove_stale(tmp)
            fds.append(_create(tmp, t.entry.data, t.mode, t.owner))
            staged.append(tmp)
        if hasattr(posix, "posix_fadvise"):
            for fd in fds:
                # Starts writeback without waiting for it (WB_SYNC_NONE).
                posix.posix_fadvise(fd, 0, 0, posix.POSIX_FADV_DONTNEED)
        for fd in fds:
            posix.fsync(fd)
    finally:
        for fd in fds:
            posix.close(fd)


def install(root: str, manifest: Manifest, log: Log, after_each: object = None,
            backup_dir: "str | None" = None, remove: "list[str] | None" = None,
            txid: "str | None" = None) -> Backup:
    """Install every manifest file as one transaction; on failure restore what was
    already replaced.

    Back up the originals (metadata only); write every new file beside its target and
    fsync it; then rename them all into place. A crash at any point leaves either the
    original or a complete new file at each path, and the true originals in the backup;
    the instance uuid is recorded only after all of it, so the next boot finishes the job.
    ``remove``: allowlisted guest paths to move aside in the same transaction (into the
    backup, whence a rollback restores them): an image file that would override ours.
    ``txid``: the hot-plug transaction the backup (``backup_dir``) belongs to.
    """
    # Preflight: every target must be writable without following a symlinked directory
    # and must not be something other than a file or symlink, before anything changes.
    dirs: set[str] = set()
    targets: list[Target] = []
    kept: list[str] = []
    for entry in manifest.entries:
        no_symlink_parents(root, entry.path, dirs)
        path = join(root, entry.path)
        kind, st = target_stat(path)
        if kind == "symlink" and entry.path in KEEP_SYMLINKS:
            log("kept /%s: a symlink (the image manages it)" % entry.path)
            kept.append(entry.path)
            continue
        targets.append(Target(entry, path, kind, st))
    aside: list[tuple[str, str]] = []
    for rel in remove or []:
        if not is_allowed_path(rel):
            raise AgentError("will not move aside /%s: not an allowed guest path" % rel)
        no_symlink_parents(root, rel, dirs)
        kind, _st = target_stat(join(root, rel))
        if kind == "file":
            aside.append((rel, join(root, rel)))
    directory = backup_dir or join(root, STATE_DIR, "backup", manifest.uuid)
    no_symlink_parents(root, relative_to(root, directory) + "/x")
    backup = Backup(root, manifest.uuid, directory, txid)
    backup.installed = len(targets)
    backup.kept = kept
    done: list[str] = []
    staged: list[str] = []
    try:
        for t in targets:
            backup.save(t.entry.path, t.path, t.kind)
        for rel, path in aside:
            backup.save(rel, path, "file")
        stage_files(targets, staged, dirs)
        for t, tmp in zip(targets, staged):
            posix.rename(tmp, t.path)
            done.append(t.entry.path)
            log("installed /%s (%d bytes)" % (t.entry.path, len(t.entry.data)))
            if callable(after_each):
                after_each(t.entry.path)
        for rel, path in aside:
            posix.unlink(path)
            done.append(rel)
            log("moved /%s aside (kept in the backup)" % rel)
    except (OSError, AgentError) as exc:
        log("install failed (%s): rolling back %d file(s)" % (exc, len(done)))
        for tmp in staged[len(done):]:
            try:
                posix.unlink(tmp)
            except OSError:
                pass
        failed = []
        for rel in reversed(done):
            try:
                backup.restore(root, rel)
            except (OSError, AgentError) as rexc:
                failed.append(rel)
                log("rollback of /%s failed: %s" % (rel, rexc))
        raise AgentError("install failed: %s%s" % (
            exc, "; rollback FAILED for /%s" % ", /".join(failed) if failed else
            "; every file is as it was")) from None
    return backup


# -- hot-plug: one transaction for a running guest -----------------------------------------
#
# The host pipes a bundle (the manifest and the files it lists) into
# ``netinject-guest apply --txid T`` through qemu-guest-agent's guest-exec. The files are
# installed with the same checks, backups and rollback as a first boot, under a lock, and
# the outcome is recorded against T. If the host loses the reply (the agent was killed,
# stopped or restarted), ``apply-status --txid T`` tells it what happened, and fences T
# off if it has not run yet: a late-arriving apply of T then does nothing. So the host
# always learns the truth and the guest's files are either all old or all new.


APPLY_LOCK = STATE_DIR + "/apply.lock"
APPLY_STATUS = STATE_DIR + "/apply-status"
APPLY_BACKUP = STATE_DIR + "/apply-backup"
APPLY_STATUS_KEEP = 32


def _read_all(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = posix.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise AgentError("input over %d bytes" % limit)
        chunks.append(chunk)


class ApplyLock:
    """flock on /var/lib/netinject/apply.lock: one apply or apply-status at a time."""

    def __init__(self, root: str) -> None:
        no_symlink_parents(root, APPLY_LOCK)
        makedirs(join(root, STATE_DIR), 0o700)
        self.fd = posix.open(join(root, APPLY_LOCK), posix.O_RDWR | posix.O_CREAT
                             | posix.O_NOFOLLOW | posix.O_NONBLOCK | posix.O_CLOEXEC, 0o600)
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def close(self) -> None:
        posix.close(self.fd)  # releases the lock


def read_apply_status(root: str) -> "list[tuple[str, str]]":
    try:
        text = read_small(join(root, APPLY_STATUS), 65536).decode("ascii", "replace")
    except OSError:
        return []
    out = []
    for line in text.split("\n"):
        txid, _, outcome = line.partition(" ")
        if txid and outcome:
            out.append((txid, outcome))
    return out


def record_apply_status(root: str, txid: str, outcome: str) -> None:
    entries = [e for e in read_apply_status(root) if e[0] != txid]
    entries.append((txid, outcome))
    text = "".join("%s %s\n" % e for e in entries[-APPLY_STATUS_KEEP:])
    write_atomic(root, APPLY_STATUS, text.encode("ascii", "replace"), 0o600)


def _apply_backup_dir(root: str) -> str:
    """/var/lib/netinject/apply-backup; AgentError if it, or a directory on the way, is
    a symlink: recovery would restore files from wherever it points, and dropping the
    backup would delete there."""
    no_symlink_parents(root, APPLY_BACKUP + "/x")
    return join(root, APPLY_BACKUP)


def _drop_apply_backup(root: str) -> None:
    """Remove the apply backup: its entries, then its transaction marks (so that a
    removal cut short still names its transaction), then the directory."""
    directory = _apply_backup_dir(root)
    try:
        names = posix.listdir(directory)
    except FileNotFoundError:
        return
    for name in sorted(names, key=lambda n: n.startswith(TXID_MARK)):
        posix.unlink(join(directory, name))
    try:
        posix.rmdir(directory)
    except OSError:
        pass


def _restore_all(root: str, backup: Backup) -> None:
    for rel in backup.index:
        backup.restore(root, rel)


def _recover(root: str, log: Log) -> None:
    """Deal with an apply backup a transaction left: restore it only if its transaction
    did not end (interrupted: no outcome recorded) or ended broken (its rollback failed);
    the backup of a transaction that ended (applied, rolled back, cancelled) is stale
    and is dropped without restoring anything (its originals may be older than what is
    there now). A backup that names no transaction is refused, not guessed at."""
    directory = _apply_backup_dir(root)
    if not lexists(directory):
        return
    if not isdir(directory):
        raise AgentError("%s is not a directory" % directory)
    backup = Backup(root, "", directory)
    if len(backup.marked) != 1:
        if backup.index:
            raise AgentError("%s holds a backup that names %s transaction: not restoring "
                             "it blindly (inspect it, then remove it)" % (
                                 directory, "no" if not backup.marked else "more than one"))
        log("removed an apply backup with nothing to restore")
        _drop_apply_backup(root)
        return
    txid = backup.marked[0]
    ended = dict(read_apply_status(root)).get(txid)
    if ended is not None and not ended.startswith("broken"):
        log("dropped the backup of transaction %s, which ended (%s): nothing restored"
            % (txid, ended))
        _drop_apply_backup(root)
        return
    _restore_all(root, backup)
    _drop_apply_backup(root)
    outcome = "unchanged: %s, then rolled back by a later transaction" % (
        "interrupted" if ended is None else "its rollback failed")
    log("rolled back %s apply of transaction %s (%d file(s))"
        % ("an interrupted" if ended is None else "a broken", txid, len(backup.index)))
    try:
        record_apply_status(root, txid, outcome)
    except (OSError, AgentError) as exc:
        log("could not record the outcome of %s: %s" % (txid, exc))


def _status(outcome: str) -> int:
    if applied_kept(outcome) is not None:
        return APPLY_OK
    return APPLY_BROKEN if outcome.startswith("broken") else APPLY_UNCHANGED


def _transaction(root: str, txid: str, log: Log,
                 body: "Callable[[], tuple[int, str]]") -> "tuple[int, str]":
    """Run ``body`` under the apply lock unless transaction ``txid`` already ended (its
    recorded outcome is then the answer), after dealing with a backup an earlier
    transaction left (which may end ``txid`` itself: an interrupted ``txid`` rolled back)."""
    if not (is_plain_name(txid) and len(txid) <= 64):
        return APPLY_UNCHANGED, "refused: bad transaction id"
    lock = ApplyLock(root)
    try:
        ended = dict(read_apply_status(root)).get(txid)
        if ended is None or ended.startswith("broken"):
            _recover(root, log)
            ended = dict(read_apply_status(root)).get(txid)
        if ended is not None:
            log("transaction %s already ended: %s" % (txid, ended))
            return _status(ended), ended
        return body()
    finally:
        lock.close()


def apply(root: str, sysfs: str, txid: str, raw: bytes, log: Log,
          refuse: "str | None" = None) -> "tuple[int, str]":
    """Install a bundle as one transaction; (exit status, outcome recorded for txid).
    ``refuse``: a reason to change nothing (recorded as the outcome like any other).

    The backup goes as soon as the transaction ends, applied or not: one left behind
    would make the next transaction restore its (by then stale) originals."""

    def body() -> "tuple[int, str]":
        try:
            if refuse:
                raise AgentError(refuse)
            manifest = verify(parse_bundle(raw))
            system = system_uuid(sysfs)
            if system != manifest.uuid:
                raise AgentError("the bundle is for instance %s, not this machine (%s)"
                                 % (manifest.uuid, system))
            backup = install(root, manifest, log, backup_dir=join(root, APPLY_BACKUP),
                             txid=txid)
        except AgentError as exc:
            broken = "rollback FAILED" in str(exc)
            if not broken:  # every file is as it was: nothing left to restore
                _drop_apply_backup(root)
            # (A failed rollback keeps the backup: the next transaction retries it.)
            outcome = ("broken: %s" if broken else "unchanged: %s") % exc
            outcome = outcome.replace("\n", " ")
            try:
                record_apply_status(root, txid, outcome)
            except (OSError, AgentError) as rexc:  # (a full disk): the reply tells the host
                log("could not record the outcome of %s: %s" % (txid, rexc))
            log("apply %s: %s" % (txid, outcome))
            return _status(outcome), outcome
        outcome = applied_outcome(backup.kept)
        try:
            record_apply_status(root, txid, outcome)
        except (OSError, AgentError) as exc:
            # Unrecorded, the backup would have the next transaction roll these files
            # back behind the host's back: roll back now, and say so.
            _restore_all(root, backup)
            _drop_apply_backup(root)
            outcome = "unchanged: could not record the outcome (%s): rolled back" % exc
            log("apply %s: %s" % (txid, outcome))
            return APPLY_UNCHANGED, outcome
        _drop_apply_backup(root)
        log("apply %s: %d file(s) installed" % (txid, backup.installed))
        return APPLY_OK, outcome

    return _transaction(root, txid, log, body)


def apply_status(root: str, txid: str, log: Log) -> "tuple[int, str]":
    """The outcome of transaction ``txid``; if it has not run, fence it off for good."""

    def cancel() -> "tuple[int, str]":
        outcome = "cancelled: never ran"
        record_apply_status(root, txid, outcome)
        log("transaction %s cancelled before it ran" % txid)
        return APPLY_UNCHANGED, outcome

    return _transaction(root, txid, log, cancel)
