"""Path helpers for the guest agent: reading small files without hanging on a FIFO,
checking that nothing on the way to a path is a symlink, and resolving a path inside an
image tree as a chroot would (``netinject-guest install --root``). The rest is
``os.path``.

(The agent once avoided ``os`` for ~20 ms of import time under emulation, with its own
copies of posixpath's functions; natively ``os`` costs ~1 ms, and the agent is done
seconds before the network service needs it, so it uses the standard module: measured
with ``netinject bench agent --imports``, see docs/benchmarks.md.)
"""

import os
import stat
from os.path import basename as basename  # (re-exported: the other modules take the
from os.path import dirname as dirname  # os.path functions they use from here)
from os.path import exists as exists
from os.path import isdir as isdir
from os.path import isfile as isfile
from os.path import islink as islink
from os.path import join as join
from os.path import lexists as lexists
from os.path import normpath as normpath

from .errors import AgentError

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def is_plain_name(name: str) -> bool:
    """A file name of letters, digits, '.', '_', '-' (not starting with '.' or '-')."""
    return (0 < len(name) <= 128 and name[0] not in ".-" and set(name) <= _NAME_CHARS)


def _lmode(path: str) -> int:
    """The st_mode of ``path`` itself (not followed), 0 if it cannot be looked at."""
    try:
        return os.lstat(path).st_mode
    except (OSError, ValueError):
        return 0


def makedirs(path: str, mode: int = 0o777) -> None:
    """mkdir -p (an existing directory is fine; anything else there is not)."""
    os.makedirs(path, mode, exist_ok=True)


def relative_to(root: str, path: str) -> str:
    """``path`` below ``root`` without the root ('/' -> 'dev/vdb'); other paths without
    their leading '/'."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path.lstrip("/")


def read_small(path: str, limit: int = 4096) -> bytes:
    """The start of a small regular file (sysfs attributes, the state file), no file
    object. Opened non-blocking and checked to be a regular file: a FIFO put there
    cannot hang the agent."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, "not a regular file: %s" % path)
        return os.read(fd, limit)
    finally:
        os.close(fd)


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
        mode = _lmode(cur)
        if stat.S_ISLNK(mode):
            raise AgentError("refusing to write through symlinked directory %s" % cur)
        if dirs is not None and stat.S_ISDIR(mode):
            dirs.add(cur)


MAX_LINKS = 40  # symlinks followed in one lookup before it is a loop (Linux: ELOOP at 40)


def resolve_in_root(root: str, rel: str, follow_last: bool = True) -> str:
    """The path on this machine of ``rel`` inside the tree at ``root``, resolved as the
    kernel resolves it for a process chrooted there: a symlink's absolute target starts
    again at ``root`` and '..' never climbs above it. So a link in an image that leads to
    the build host's own directory (etc/udev/rules.d -> /etc/udev/rules.d) is re-rooted
    into the image, where the booted guest will look, and lookups never leave the tree;
    relative links inside the tree (merged-usr's lib -> usr/lib) work as they do in the
    guest.

    Every directory on the returned path exists as a real directory (not a symlink)
    inside the tree, except trailing names that do not exist yet (kept as given: a
    makedirs creates them as directories inside the tree). ``follow_last`` False leaves
    the final name unresolved (to replace or remove that name itself).

    AgentError when the lookup fails as it would in the chroot: a loop (more than
    MAX_LINKS links), a followed link whose target does not exist in the tree (a link
    meant for the build host; nothing is created at its target), or a non-directory on
    the way. The tree is assumed not to change under the lookup (it is the image being
    built, not a live system another user writes to)."""
    base = root.rstrip("/")
    done: list[str] = []  # resolved names below root: real directories, or missing
    # Names still to look up (last first), and whether each came from a link's target.
    todo: list[tuple[str, bool]] = [(p, False) for p in reversed(rel.split("/"))]
    links = 0
    via = ""  # the last link followed, for messages
    missing = False  # a name in ``done`` does not exist
    while todo:
        name, from_link = todo.pop()
        if name in ("", "."):
            continue
        here = "/".join([*done, name])
        if name == "..":
            if missing:  # (as the kernel: no parent of what is not there)
                raise AgentError("/%s: /%s does not exist" % (rel, here))
            if done:
                done.pop()
            continue
        try:
            mode = os.lstat(base + "/" + here).st_mode
        except FileNotFoundError:
            if from_link:
                raise AgentError("/%s: the symlink %s leads to nothing in the image (/%s "
                                 "is not there; a link meant for the build host?)"
                                 % (rel, via, here)) from None
            done.append(name)
            missing = True
            continue
        except OSError as exc:
            raise AgentError("/%s: cannot look at /%s: %s"
                             % (rel, here, os.strerror(exc.errno or 5))) from None
        last = not todo  # (a trailing '/' or '.' makes it a directory to go through)
        if stat.S_ISLNK(mode) and (follow_last or not last):
            links += 1
            if links > MAX_LINKS:
                raise AgentError("/%s: too many levels of symbolic links (a loop)" % rel)
            try:
                target = os.readlink(base + "/" + here)
            except OSError as exc:
                raise AgentError("/%s: cannot read the link /%s: %s"
                                 % (rel, here, os.strerror(exc.errno or 5))) from None
            via = "/%s -> %s" % (here, target)
            if target.startswith("/"):
                done = []
            todo.extend((p, True) for p in reversed(target.split("/")))
            continue
        if not last and not stat.S_ISDIR(mode):
            raise AgentError("/%s: /%s is not a directory" % (rel, here))
        done.append(name)
    return base + "/" + "/".join(done) if done else (base or "/")
