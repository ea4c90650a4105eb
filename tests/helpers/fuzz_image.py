"""Image trees for tests of ``netinject-guest install`` and ``uninstall`` (issue 20, A1):
a snapshot of every entry that never follows a link or opens a FIFO."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def tree_state(root: Path, times: bool = True,
               skip: str | None = None) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root`` (and root itself, as '.'), never following a link or
    opening a FIFO or device: type and mode, owner, and a file's inode and content or a
    link's target (``times``: also every entry's modification time, so that a file
    created and removed again still shows in its directory's). ``skip``: a name in
    ``root`` whose subtree is left out (the entry itself is kept)."""
    out: dict[str, tuple[object, ...]] = {}
    base = str(root)
    cut = len(base) + 1

    def one(path: str, rel: str) -> None:
        st = os.lstat(path)
        when: tuple[object, ...] = (st.st_mtime_ns,) if times else ()
        kind = stat.S_IFMT(st.st_mode)
        common = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        if kind == stat.S_IFLNK:
            out[rel] = ("link", os.readlink(path))
        elif kind == stat.S_IFDIR:
            out[rel] = ("dir", *common, *when)
        elif kind == stat.S_IFREG:
            with open(path, "rb") as fh:
                out[rel] = ("file", *common, st.st_ino, fh.read(), *when)
        else:
            out[rel] = ("special", kind, *common, st.st_rdev, *when)

    if not os.path.lexists(base):
        return out
    one(base, ".")
    for dirpath, dirnames, filenames in os.walk(base):  # (links to directories: not walked)
        for name in dirnames + filenames:
            path = dirpath + "/" + name
            one(path, path[cut:])
        if dirpath == base and skip in dirnames:
            dirnames.remove(skip)
    return out
