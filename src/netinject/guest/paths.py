"""Path helpers for the guest agent, on ``posix`` alone.

posixpath's behaviour for the cases the agent has (posixpath needs ``os``, which costs
tens of ms to import on a first boot under TCG), plus reading small files and checking
that nothing on the way to a path is a symlink.
"""

import _stat
import posix

from .contract import AgentError


def join(path: str, *parts: str) -> str:
    for part in parts:
        if part.startswith("/"):
            path = part
        elif not path or path.endswith("/"):
            path += part
        else:
            path += "/" + part
    return path


def dirname(path: str) -> str:
    head = path[:path.rfind("/") + 1]
    stripped = head.rstrip("/")
    return stripped if stripped else head


def basename(path: str) -> str:
    return path[path.rfind("/") + 1:]


def normpath(path: str) -> str:
    """'.' and '..' resolved lexically, as posixpath.normpath ('/..' is '/'; POSIX keeps
    exactly two leading slashes)."""
    absolute = path.startswith("/")
    lead = "//" if path.startswith("//") and not path.startswith("///") else "/"
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            out.append(part)
        elif out and out[-1] != "..":
            out.pop()
        elif not absolute:
            out.append(part)
    text = "/".join(out)
    return (lead + text) if absolute else (text or ".")


def _mode(path: str, follow: bool = True) -> int:
    """The file's st_mode, 0 if it cannot be looked at."""
    try:
        return (posix.stat(path) if follow else posix.lstat(path)).st_mode
    except (OSError, ValueError):
        return 0


def lexists(path: str) -> bool:
    return _mode(path, False) != 0


def exists(path: str) -> bool:
    return _mode(path) != 0


def isdir(path: str) -> bool:
    return _stat.S_ISDIR(_mode(path))


def isfile(path: str) -> bool:
    return _stat.S_ISREG(_mode(path))


def islink(path: str) -> bool:
    return _stat.S_ISLNK(_mode(path, False))


def makedirs(path: str, mode: int = 0o777) -> None:
    """mkdir -p (an existing directory is fine)."""
    try:
        posix.mkdir(path, mode)
    except FileNotFoundError:
        parent = dirname(path.rstrip("/"))
        if not parent or parent == path:
            raise
        makedirs(parent, mode)
        try:
            posix.mkdir(path, mode)
        except FileExistsError:
            if not isdir(path):
                raise
    except FileExistsError:
        if not isdir(path):
            raise


def relative_to(root: str, path: str) -> str:
    """``path`` below ``root`` without the root ('/' -> 'dev/vdb'); other paths without
    their leading '/'."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path.lstrip("/")


def read_small(path: str, limit: int = 4096) -> bytes:
    """The start of a small regular file (sysfs attributes, the state file), no file
    object. Opened non-blocking and checked to be a regular file: a FIFO put there
    cannot hang the agent."""
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK)
    try:
        if not _stat.S_ISREG(posix.fstat(fd).st_mode):
            raise OSError(22, "not a regular file: %s" % path)
        return posix.read(fd, limit)
    finally:
        posix.close(fd)


def no_symlink_parents(root: str, rel: str, dirs: "set[str] | None" = None) -> None:
    """AgentError if a directory on the way from ``root`` to ``root/rel`` is a symlink:
    nothing the agent writes (targets, state, backups, log) leaves the root through one.
    ``dirs`` collects the parents found to be real directories, and those already in it
    are not looked at again (targets that share parents)."""
    cur = root
    for part in rel.split("/")[:-1]:
        cur = join(cur, part)
        if dirs is not None and cur in dirs:
            continue
        mode = _mode(cur, follow=False)
        if _stat.S_ISLNK(mode):
            raise AgentError("refusing to write through symlinked directory %s" % cur)
        if dirs is not None and _stat.S_ISDIR(mode):
            dirs.add(cur)
