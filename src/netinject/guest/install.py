"""Installing files as one transaction: first boot (from the drive) and hot-plug
(``apply``, from a bundle on standard input: txn.py runs it under its lock).

Back up the originals (metadata only), write every new file beside its target and fsync
it, then rename them all into place; on failure restore what was already replaced. A
crash at any point leaves either the original or a complete new file at each path, and
the true originals in the backup.
"""

import os
import stat

from .contract import (
    KEEP_SYMLINKS,
    RESOLV_CONF,
    STATE_DIR,
    AgentError,
    Entry,
    Manifest,
    is_allowed_path,
    is_private,
)
from .log import Log
from .paths import (
    basename,
    dirname,
    join,
    lexists,
    makedirs,
    no_symlink_parents,
    read_small,
    relative_to,
    resolve_in_root,
)


class InstallFailed(AgentError):
    """install() failed midway and rolled back; ``broken``: the rollback failed too, so
    the files are neither all old nor all new."""

    def __init__(self, message: str, broken: bool) -> None:
        AgentError.__init__(self, message)
        self.broken = broken


def target_stat(target: str) -> "tuple[str, os.stat_result | None]":
    """'file', 'symlink' or 'absent' (one lstat) and the lstat result (None when absent);
    AgentError for anything else."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return "absent", None
    except OSError as exc:
        raise AgentError("cannot look at %s: %s" % (target, os.strerror(exc.errno or 5))
                         ) from None
    if stat.S_ISLNK(st.st_mode):
        return "symlink", st
    if stat.S_ISREG(st.st_mode):
        return "file", st
    raise AgentError("%s exists and is not a regular file" % target)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_beside(path: str) -> str:
    """The temporary name a file is staged under, beside its target."""
    return join(dirname(path), ".%s.netinject-tmp" % basename(path))


def remove_stale(path: str) -> None:
    """Make way for a new file at a name of ours (a staging or temporary name): a regular
    file an interrupted run left is unlinked (only its name: a hard link to an outside
    file leaves that file alone); anything else there is not ours to touch."""
    kind = target_stat(path)[0]
    if kind == "file":
        os.unlink(path)
    elif kind != "absent":
        raise AgentError("%s is in the way (a %s, not a file netinject left)" % (path, kind))


def _create(path: str, data: bytes, mode: int, owner: "tuple[int, int] | None" = None
            ) -> int:
    """Create ``path`` afresh (O_EXCL|O_NOFOLLOW: never through a symlink or into an
    existing file), write ``data`` with ``mode`` (and ``owner``); the open descriptor,
    for the caller to fsync and close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                    | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if owner is not None:
            os.fchown(fd, owner[0], owner[1])
        os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        try:
            os.unlink(path)
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
    tmp = tmp_beside(path)
    remove_stale(tmp)
    fd = _create(tmp, data, mode)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise
    _fsync_dir(d)


LOCK_FILE = STATE_DIR + "/apply.lock"


class AgentLock:
    """flock on /var/lib/netinject/apply.lock, held by a boot-time install and by every
    live change (apply, apply-status, sync): one at a time, so none sees the files
    another is changing. Waits at most ``wait`` seconds, then AgentError (nothing was
    changed: try again)."""

    def __init__(self, root: str, wait: float) -> None:
        import fcntl
        import time

        no_symlink_parents(root, LOCK_FILE)
        makedirs(join(root, STATE_DIR), 0o700)
        self.fd = os.open(join(root, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                          | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise AgentError("another netinject run holds %s (a boot-time install "
                                     "or another live change) after %g s: nothing was "
                                     "changed; try again" % ("/" + LOCK_FILE, wait)) from None
                time.sleep(0.05)

    def close(self) -> None:
        os.close(self.fd)  # releases the lock


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
        self.changed: list[str] = []  # guest paths that install replaced or moved aside
        self.made_dirs: list[str] = []  # directories that install made (this run only)
        try:
            names = os.listdir(self.dir)
            self.made = True
        except OSError:
            names = []
            self.made = False
        for name in names:
            if name.startswith(TXID_MARK):
                self.marked.append(name[len(TXID_MARK):])
                continue
            try:
                mode = os.lstat(join(self.dir, name)).st_mode
            except OSError:
                continue
            if stat.S_ISLNK(mode):
                kind = "symlink"
            elif not stat.S_ISREG(mode):
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
            write_new(join(self.dir, TXID_MARK + self.txid), b"", 0o600)
            self.marked.append(self.txid)
        entry = self._entry(rel)
        if kind == "symlink":
            os.symlink(os.readlink(target), entry)
        elif kind == "file":
            try:
                os.link(target, entry)
            except OSError:  # another filesystem: a durable copy instead
                with open(target, "rb") as fh:
                    write_atomic(self.root, relative_to(self.root, entry), fh.read(),
                                 os.stat(target).st_mode & 0o7777)
        else:
            remove_stale(entry + ".absent")
            write_new(entry + ".absent", b"", 0o600)
        self.index[rel] = kind

    def restore(self, root: str, rel: str) -> None:
        kind = self.index.get(rel)
        target = join(root, rel)
        entry = self._entry(rel)
        tmp = join(dirname(target), ".%s.netinject-restore" % basename(target))
        remove_stale(tmp)
        if kind == "absent":
            if lexists(target):
                os.unlink(target)
        elif kind == "symlink":
            os.symlink(os.readlink(entry), tmp)
            os.rename(tmp, target)
        elif kind == "file":
            try:
                os.link(entry, tmp)
                os.rename(tmp, target)
            except OSError:
                with open(entry, "rb") as fh:
                    write_atomic(root, rel, fh.read(), os.stat(entry).st_mode & 0o7777)


def write_new(path: str, data: bytes, mode: int) -> None:
    """Create ``path`` (never through a symlink, never over a file) with ``data``."""
    os.close(_create(path, data, mode))


# How much longer than ours a resolv.conf with the same directives may be (comments).
RESOLV_SLACK = 4096


def resolver_lines(data: bytes) -> "list[bytes]":
    """resolv.conf's directives as the resolver reads them (resolv.conf(5)): comment lines
    (';' or '#' first) and blank lines dropped, each line's words joined by one space."""
    out = []
    for line in data.splitlines():
        if line[:1] in (b"#", b";"):
            continue
        words = line.split()
        if words:
            out.append(b" ".join(words))
    return out


class Target:
    """One file to install: the manifest entry, where it goes, and what is there now
    (kind and lstat), looked at once in the preflight."""

    def __init__(self, entry: Entry, path: str, kind: str,
                 st: "os.stat_result | None") -> None:
        self.entry = entry
        self.path = path
        self.kind = kind
        self.st = st

    @property
    def private(self) -> bool:
        """A file of a stack that requires the manifest's mode and root's ownership
        (contract.is_private): NetworkManager ignores a keyfile others can read or
        another user owns, netplan warns about a readable YAML. An old file's looser mode
        there would silently leave the guest on DHCP."""
        return is_private(self.entry.path)

    @property
    def mode(self) -> int:
        """A replaced file keeps its mode (0600 stays 0600), except a private one; a new
        one, and a private one, get the manifest's."""
        if self.kind == "file" and self.st is not None and not self.private:
            return self.st.st_mode & 0o7777
        return self.entry.mode

    def same(self) -> bool:
        """Whether the file there already is this one: bytes, mode and owner. For
        /etc/resolv.conf: the same resolver directives (resolver_lines), since a stack
        that writes it itself (NetworkManager from the keyfiles' dns=) puts the same
        servers under its own comment; writing ours back would only flip it again."""
        resolv = self.entry.path == RESOLV_CONF
        if self.kind != "file" or self.st is None or (
                not resolv and self.st.st_size != len(self.entry.data)):
            return False
        if self.st.st_mode & 0o7777 != self.mode or (
                self.private and (self.st.st_uid, self.st.st_gid) != (0, 0)):
            return False
        try:
            there = read_small(self.path,
                               len(self.entry.data) + (RESOLV_SLACK if resolv else 1))
        except OSError:
            return False
        if resolv:
            return resolver_lines(there) == resolver_lines(self.entry.data)
        return there == self.entry.data

    @property
    def owner(self) -> "tuple[int, int] | None":
        """A replaced file keeps its owner, except a private one, which becomes root's;
        None: a new file, the agent's own (root's at boot)."""
        if self.kind != "file" or self.st is None:
            return None
        return (0, 0) if self.private else (self.st.st_uid, self.st.st_gid)


def stage_files(targets: "list[Target]", staged: list[str], dirs: "set[str]",
                made: "list[str] | None" = None) -> None:
    """Write each file beside its target (appending the temporary path to ``staged``
    once it is created) and make them all durable before any rename. Parent directories
    not in ``dirs`` (those _safe_target found) are created; ``made`` collects those that
    were not there (deepest first), for a rollback to remove.

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
                missing = d
                while made is not None and not lexists(missing):
                    made.append(missing)
                    missing = dirname(missing)
                makedirs(d)
                dirs.add(d)
            tmp = tmp_beside(t.path)
            remove_stale(tmp)
            fds.append(_create(tmp, t.entry.data, t.mode, t.owner))
            staged.append(tmp)
        if hasattr(os, "posix_fadvise"):
            for fd in fds:
                # Starts writeback without waiting for it (WB_SYNC_NONE).
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)


def install(root: str, manifest: Manifest, log: Log, backup_dir: "str | None" = None,
            remove: "list[str] | None" = None, txid: "str | None" = None,
            skip_same: bool = False) -> Backup:
    """Install every manifest file as one transaction; on failure restore what was
    already replaced.

    Back up the originals (metadata only); write every new file beside its target and
    fsync it; then rename them all into place. A crash at any point leaves either the
    original or a complete new file at each path, and the true originals in the backup;
    the instance uuid is recorded only after all of it, so the next boot finishes the job.
    ``remove``: allowlisted guest paths to move aside in the same transaction (into the
    backup, whence a rollback restores them): an image file that would override ours.
    ``txid``: the hot-plug transaction the backup (``backup_dir``) belongs to.
    ``skip_same``: a file already there with the same bytes, mode and owner is left
    alone (a live change rewrites only what changes: a stack that reads its files again
    reconfigures what it finds rewritten).
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
        target = Target(entry, path, kind, st)
        if skip_same and target.same():
            continue
        targets.append(target)
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
        stage_files(targets, staged, dirs, backup.made_dirs)
        for t, tmp in zip(targets, staged):
            os.rename(tmp, t.path)
            done.append(t.entry.path)
            log("installed /%s (%d bytes)" % (t.entry.path, len(t.entry.data)))
        for rel, path in aside:
            os.unlink(path)
            done.append(rel)
            log("moved /%s aside (kept in the backup)" % rel)
        backup.changed = done
    except (OSError, AgentError) as exc:
        log("install failed (%s): rolling back %d file(s)" % (exc, len(done)))
        for tmp in staged[len(done):]:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        failed = restore(root, backup, done, log)
        raise InstallFailed("install failed: %s%s" % (
            exc, "; rollback FAILED for /%s" % ", /".join(failed) if failed else
            "; every file is as it was"), bool(failed)) from None
    return backup


def restore(root: str, backup: Backup, rels: "list[str]", log: Log) -> "list[str]":
    """Put the originals of ``rels`` back from ``backup``, last first; the paths whose
    restore failed (logged), [] when every one is as it was."""
    failed = []
    for rel in reversed(rels):
        try:
            backup.restore(root, rel)
        except (OSError, AgentError) as exc:
            failed.append(rel)
            log("rollback of /%s failed: %s" % (rel, exc))
    for d in sorted(backup.made_dirs, key=len, reverse=True):
        try:
            os.rmdir(d)  # (only an empty one: what the install made for its files)
        except OSError:
            pass
    return failed
