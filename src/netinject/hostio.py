"""The host side's one writer: every output checked before the first write, each file
whole or absent, and a command's outputs all written or none.

What an output may be (the checks, before anything is written; OutputError, exit 2):

* A file output is a regular file or a path that does not exist. A directory, a device,
  a FIFO or a socket there is refused, and nothing here ever opens an existing output
  (a FIFO would block, a device would be written to; as root, /dev/null replaced by a
  regular file breaks the host).
* The user's own path may go through symbolic links: they chose the directory. A file
  the user names must itself not be a link (``--out /dev/stdout``, or a link a stranger
  left in /tmp): it is refused, neither replaced nor written through.
* Below an ``--out`` directory, the paths are netinject's: a symlink on the way to a
  target (``DIR/etc -> /etc``) is refused wherever it points (following it would write
  outside DIR), and a symlink AT a target file is replaced by the new file, never
  written through.
* An output is never one of the command's inputs (same path or same inode).

How outputs are written (``write_all``; ``write_tree`` and ``write_atomic`` are its
forms, ``staged_file`` the same for a file a tool builds): each file is created afresh
beside its target (``O_EXCL|O_NOFOLLOW``, in directories opened ``O_NOFOLLOW`` below the
user's directory) and fsynced; an existing target gets a hard-link backup; only then is
each renamed into place, after a last look at the target (still absent, a regular file,
or a link a tree may replace: anything else that appeared since the checks is refused).
On any failure (a full disk, an I/O error, Ctrl-C) the staged files are removed, the
replaced targets restored from their backups and the directories made removed: every
output is as it was, and the error (WriteError, exit 1) names the file and the reason.
A rename does not allocate, so a full disk is met while staging, before any target
changes. What remains: a non-file made at a target between that last look and the
rename (a window of one system call) would be replaced by the new file, not written to.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import NetinjectError
from .guest.contract import file_mode

OTHER_KIND = "(an output must be a regular file or not exist)"


class OutputError(NetinjectError):
    """An output path cannot be written (a device, FIFO, directory or link where a file
    must go, a symlinked directory below --out, an input, no permission). Raised before
    anything is written; exit 2."""


class WriteError(NetinjectError):
    """Writing failed after the checks passed (no space, an I/O error); what was written
    has been undone. Exit 1."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _q(path: Path | str) -> str:
    return repr(str(path))


def _where(option: str) -> str:
    return f"{option}: " if option else ""


def _not_a_file(path: Path | str, mode: int, option: str = "") -> OutputError:
    return OutputError(f"{_where(option)}{_q(path)} is {_kind(mode)}, not a regular file "
                       f"{OTHER_KIND}")


def _lstat(path: Path, option: str) -> os.stat_result | None:
    """lstat, or None when nothing is there (or a parent is not a directory: the parent
    check names it). Other failures (a link loop, a name too long, no search
    permission) are an OutputError."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise OutputError(f"{option}: cannot look at {_q(path)}: {exc.strerror}") from None


def _stat(path: Path, option: str) -> os.stat_result | None:
    """stat (links followed: the user's own directories), None when nothing is there."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise OutputError(f"{option}: cannot look at {_q(path)}: {exc.strerror}") from None


def _check_writable(d: Path, option: str) -> None:
    if os.access(d, os.W_OK | os.X_OK):
        return
    read_only = False
    with contextlib.suppress(OSError):
        read_only = bool(os.statvfs(d).f_flag & os.ST_RDONLY)
    raise OutputError(f"{option}: cannot write into {_q(d)} "
                      f"({'read-only file system' if read_only else 'permission denied'})")


def _check_dir_for(d: Path, needed_for: Path, option: str) -> None:
    """``d`` is a directory (links followed: the user's path) we may write into, or it
    will be created: then its first existing ancestor is such a directory."""
    existing = d
    while (st := _stat(existing, option)) is None:
        if existing.is_symlink():  # a dangling symlink: mkdir would fail on it
            raise OutputError(f"{option}: {_q(existing)} is a dangling symlink")
        if existing == existing.parent:
            break
        existing = existing.parent
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{option}: {_q(existing)} is not a directory (needed for "
                          f"{_q(needed_for)})")
    _check_writable(existing, option)


def _check_not_input(path: Path, option: str, inputs: Iterable[Path]) -> None:
    for source in inputs:
        try:
            same = os.path.samefile(path, source)
        except OSError:
            continue
        if same:
            raise OutputError(f"{option}: {_q(path)} is the input file {_q(source)}: "
                              "refusing to replace it")


def check_output(path: Path, option: str, inputs: Iterable[Path] = ()) -> None:
    """Raise OutputError unless ``path`` can be created or replaced as a regular file
    (see the module doc): absent or a regular file, not an input, in a directory we may
    write into. Looks only (lstat, stat, access): opens and writes nothing."""
    st = _lstat(path, option)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{option}: {_q(path)} is a directory, not a file")
        if stat.S_ISLNK(st.st_mode):
            raise OutputError(f"{option}: {_q(path)} is a symbolic link: give the file "
                              "itself (an output is replaced, never written through a link)")
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_file(path, st.st_mode, option)
        _check_not_input(path, option, inputs)
    _check_dir_for(path.parent, path, option)


def check_outputs(outputs: Iterable[tuple[str, Path | None]],
                  inputs: Iterable[Path] = ()) -> None:
    """check_output for each (option, path) given (None: not asked for), and no two of
    them the same file."""
    inputs = list(inputs)
    seen: dict[tuple[str, str], str] = {}
    for option, path in outputs:
        if path is None:
            continue
        check_output(path, option, inputs)
        place = _place(path)
        if place in seen:
            raise OutputError(f"{option}: {_q(path)} is also {seen[place]}'s output")
        seen[place] = option


def _place(path: Path) -> tuple[str, str]:
    """Where a file will be: its directory resolved (the user's links followed), and its
    name (a link there is not followed: it is refused or replaced)."""
    return os.path.realpath(path.parent), path.name


def check_tree(root: Path, files: Mapping[PurePosixPath, object], option: str,
               inputs: Iterable[Path] = ()) -> None:
    """Raise OutputError unless every file a write_tree(root, files) would write can be:
    ``root`` (the user's, links followed) is or can be made a directory; below it, no
    component on the way to a target is a symlink or a non-directory, each target is
    absent, a regular file (not an input) or a symlink (replaced), and every directory
    a file or directory is created in is writable. Looks only."""
    inputs = list(inputs)
    for rel in files:
        _check_rel(root, rel, option)
    root_st = _stat(root, option)
    if root_st is None:
        _check_dir_for(root, root, option)
        return  # everything below is created
    if not stat.S_ISDIR(root_st.st_mode):
        raise OutputError(f"{option}: {_q(root)} is not a directory")
    exists: dict[PurePosixPath, bool] = {PurePosixPath(): True}
    writable: set[PurePosixPath] = set()
    for rel in sorted(files):
        deepest = PurePosixPath()  # the directory the file (or its first new dir) goes in
        for i in range(1, len(rel.parts)):
            d = PurePosixPath(*rel.parts[:i])
            if d not in exists:
                exists[d] = exists[d.parent] and _is_dir_below(root, d, rel, option)
            if not exists[d]:
                break
            deepest = d
        if deepest not in writable:
            _check_writable(root.joinpath(*deepest.parts), option)
            writable.add(deepest)
        if deepest != rel.parent:
            continue  # its directory is created: nothing is there yet
        target = root.joinpath(*rel.parts)
        st = _lstat(target, option)
        if st is None or stat.S_ISLNK(st.st_mode):
            continue
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{option}: {_q(target)} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_file(target, st.st_mode, option)
        _check_not_input(target, option, inputs)


def _is_dir_below(root: Path, d: PurePosixPath, rel: PurePosixPath, option: str) -> bool:
    """Whether ``root/d`` exists (a real directory); OutputError for a symlink or a
    non-directory there."""
    path = root.joinpath(*d.parts)
    st = _lstat(path, option)
    if st is None:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(f"{option}: {_q(path)} is a symbolic link: netinject follows no "
                          f"link below {_q(root)} (it would write outside it)")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{option}: {_q(path)} is not a directory (needed for "
                          f"{_q(root.joinpath(*rel.parts))})")
    return True


def _check_rel(root: Path, rel: PurePosixPath, option: str) -> None:
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise OutputError(f"{option}: refusing to write outside {root}: {rel}")


def check_not_in_tree(path: Path, option: str, root: Path,
                      files: Iterable[PurePosixPath], tree_option: str) -> None:
    """``path`` (a file output) is not one of the files or directories the tree under
    ``root`` is made of, nor below one of its files."""
    root_real = Path(os.path.realpath(root))
    where = Path(*_place(path))
    for rel in files:
        target = root_real.joinpath(*rel.parts)
        below_root = [target, *list(target.parents)[:len(rel.parts) - 1]]
        clash = where if where in below_root else target if target in where.parents else None
        if clash is not None:
            raise OutputError(f"{option}: {_q(path)} is also a path of the {tree_option} "
                              f"tree ({clash.relative_to(root_real)})")


# -- writing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """One file to write. ``base`` is the user's directory (links in it followed; made if
    missing), ``rel`` the path below it (no link followed). ``replace_symlink``: a link
    at the target is replaced (tree files); otherwise it is refused (a file the user
    names)."""

    base: Path
    rel: PurePosixPath
    data: bytes
    mode: int = 0o644
    replace_symlink: bool = True

    @property
    def path(self) -> Path:
        return self.base.joinpath(*self.rel.parts)


@dataclass
class _Staged:
    out: Output
    dir_fd: int
    tmp: str
    ino: tuple[int, int] = (0, 0)
    backup: str | None = None


@dataclass
class _Transaction:
    """Staging, renames and their undoing (see the module doc)."""

    dirs: dict[tuple[Path, PurePosixPath], int] = field(default_factory=dict)
    made: list[tuple[int | None, Path]] = field(default_factory=list)
    staged: list[_Staged] = field(default_factory=list)
    done: list[_Staged] = field(default_factory=list)
    targets: set[tuple[int, int, str]] = field(default_factory=set)
    current: Path | None = None

    def _base(self, base: Path) -> int:
        key = (base, PurePosixPath())
        if key in self.dirs:
            return self.dirs[key]
        missing = []
        d = base
        while not os.path.lexists(d) and d != d.parent:
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            self.current = d
            os.mkdir(d)
            self.made.append((None, d))
        self.current = base
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dirs[key] = fd
        return fd

    def _dir(self, base: Path, rel_dir: PurePosixPath) -> int:
        key = (base, rel_dir)
        if key in self.dirs:
            return self.dirs[key]
        if not rel_dir.parts:
            return self._base(base)
        parent = self._dir(base, rel_dir.parent)
        name = rel_dir.name
        path = base.joinpath(*rel_dir.parts)
        self.current = path
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(name, dir_fd=parent)
            self.made.append((parent, path))
            fd = os.open(name, flags, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise OutputError(f"{_q(path)} is a symbolic link or not a directory: "
                                  f"netinject follows no link below {_q(base)}") from None
            raise
        self.dirs[key] = fd
        return fd

    @staticmethod
    def _look(s: _Staged) -> os.stat_result | None:
        """The target as it is now: absent, a regular file, or (where allowed) a link."""
        try:
            st = os.stat(s.out.rel.name, dir_fd=s.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISREG(st.st_mode) or (stat.S_ISLNK(st.st_mode) and s.out.replace_symlink):
            return st
        if stat.S_ISLNK(st.st_mode):
            raise OutputError(f"{_q(s.out.path)} is a symbolic link: give the file itself "
                              "(an output is replaced, never written through a link)")
        raise _not_a_file(s.out.path, st.st_mode)

    def reserve(self, out: Output) -> _Staged:
        """Create the staging file (empty) beside the target, after looking at it."""
        dir_fd = self._dir(out.base, out.rel.parent)
        self.current = out.path
        dst = os.fstat(dir_fd)
        key = (dst.st_dev, dst.st_ino, out.rel.name)
        if key in self.targets:
            raise OutputError(f"{_q(out.path)} would be written twice")
        self.targets.add(key)
        tmp = f".{out.rel.name[:200]}.{secrets.token_hex(4)}.netinject-tmp"
        s = _Staged(out, dir_fd, tmp)
        self._look(s)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        self.staged.append(s)
        os.close(fd)
        return s

    def seal(self, s: _Staged, data: bytes | None = None) -> None:
        """Write ``data`` into the staging file (None: a tool has filled it), give it
        its mode, fsync it, and back up the target it will replace."""
        self.current = s.out.path
        fd = os.open(s.tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=s.dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _not_a_file(s.out.base.joinpath(*s.out.rel.parent.parts, s.tmp),
                                  st.st_mode)
            if data is not None:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            os.fchmod(fd, s.out.mode)
            os.fsync(fd)
            s.ino = (st.st_dev, st.st_ino)
        finally:
            os.close(fd)
        if self._look(s) is not None:
            name = f"{s.tmp}.old"
            try:
                os.link(s.out.rel.name, name, src_dir_fd=s.dir_fd, dst_dir_fd=s.dir_fd,
                        follow_symlinks=False)
                s.backup = name
            except OSError as exc:
                # A filesystem without hard links: the target is replaced without a
                # backup (a failure in the renames then leaves it new, but whole).
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise

    def commit(self) -> None:
        for s in self.staged:
            self.current = s.out.path
            self._look(s)  # right before replacing: nothing else appeared there
            os.rename(s.tmp, s.out.rel.name, src_dir_fd=s.dir_fd, dst_dir_fd=s.dir_fd)
            self.done.append(s)
        for fd in set(self.dirs.values()):
            with contextlib.suppress(OSError):
                os.fsync(fd)
        for s in self.staged:
            if s.backup is not None:
                with contextlib.suppress(OSError):
                    os.unlink(s.backup, dir_fd=s.dir_fd)

    def rollback(self) -> list[Path]:
        """Undo everything; the paths that could not be restored."""
        failed = []
        for s in reversed(self.done):
            name = s.out.rel.name
            try:
                if s.backup is not None:
                    os.rename(s.backup, name, src_dir_fd=s.dir_fd, dst_dir_fd=s.dir_fd)
                    s.backup = None
                else:
                    st = os.stat(name, dir_fd=s.dir_fd, follow_symlinks=False)
                    if (st.st_dev, st.st_ino) == s.ino:
                        os.unlink(name, dir_fd=s.dir_fd)
            except OSError:
                failed.append(s.out.path)
        done = {id(s) for s in self.done}
        for s in self.staged:
            for name in ([s.tmp] if id(s) not in done else []) + (
                    [s.backup] if s.backup is not None else []):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=s.dir_fd)
        for parent, path in reversed(self.made):
            with contextlib.suppress(OSError):
                if parent is None:
                    os.rmdir(path)
                else:
                    os.rmdir(path.name, dir_fd=parent)
        return failed

    def close(self) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()


@contextlib.contextmanager
def _transaction() -> Iterator[_Transaction]:
    tx = _Transaction()
    try:
        yield tx
    except BaseException as exc:
        failed = tx.rollback()
        undone = (f"; rollback FAILED for {', '.join(map(str, failed))}" if failed
                  else "; nothing was changed (every output is as it was)")
        if isinstance(exc, OutputError) and not failed:
            raise
        if isinstance(exc, OSError | OutputError):
            what = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
            raise WriteError(f"writing {tx.current}: {what}{undone}") from None
        raise
    finally:
        tx.close()


def write_all(outputs: Sequence[Output]) -> list[Path]:
    """Write every output, all or none (see the module doc); the paths written.
    WriteError (everything undone) on failure; OutputError if a target turned into
    something else since the checks."""
    with _transaction() as tx:
        for out in outputs:
            tx.seal(tx.reserve(out), out.data)
        tx.commit()
    return [out.path for out in outputs]


def tree_outputs(root: Path, files: Mapping[PurePosixPath, str | bytes]) -> list[Output]:
    """The Outputs of a rendered tree: files at their guest paths below ``root``, with
    the mode the guest gives each (netplan and NetworkManager files 0600)."""
    outs = []
    for rel, content in sorted(files.items()):
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"refusing to write outside {root}: {rel}")
        data = content.encode("utf-8") if isinstance(content, str) else content
        outs.append(Output(root, rel, data, file_mode(str(rel))))
    return outs


def file_output(path: Path, data: bytes, mode: int = 0o644) -> Output:
    """The Output of a file the user names (a link there is refused, not replaced)."""
    return Output(path.parent, PurePosixPath(path.name), data, mode, replace_symlink=False)


def write_tree(root: Path, files: Mapping[PurePosixPath, str | bytes]) -> list[Path]:
    """Write rendered files under ``root`` at their guest paths, all or none; return
    what was written."""
    return write_all(tree_outputs(root, files))


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write one file the user named, whole or not at all."""
    write_all([file_output(path, data, mode)])


@contextlib.contextmanager
def staged_file(path: Path, mode: int = 0o644, *, replace_symlink: bool = False
                ) -> Iterator[Path]:
    """For a file a tool builds (an image, a copy): yields the path of an empty staging
    file beside ``path`` (the tool may remove it and create it again); when the block
    ends it is fsynced, given ``mode`` and renamed over ``path`` with write_all's checks
    and guarantees. On failure it is removed and ``path`` is as it was."""
    out = Output(path.parent, PurePosixPath(path.name), b"", mode, replace_symlink)
    with _transaction() as tx:
        s = tx.reserve(out)
        yield path.parent / s.tmp
        tx.current = path
        tx.seal(s)
        tx.commit()
