"""The host side's one writer: files land whole or not at all.

Each file is written to a temporary name in its destination directory, flushed, then
renamed over the target, so a reader (or a crash) never sees half a file. Callers
validate and render everything in memory before calling in here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from .errors import NetinjectError
from .guest.contract import file_mode


class OutputError(NetinjectError):
    """An output path cannot be written (a file where a directory must be, a directory
    where a file must be, no permission). Raised before anything is written."""


def check_output(path: Path, option: str) -> None:
    """Raise OutputError unless ``path`` can be created or replaced as a regular file:
    every existing parent is a directory we may write into, and ``path`` itself is not
    a directory. Looks only; writes nothing."""
    if path.is_dir():
        raise OutputError(f"{option}: {str(path)!r} is a directory, not a file")
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling symlink: mkdir would fail on it
            raise OutputError(f"{option}: {str(parent)!r} is a dangling symlink")
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{option}: {str(parent)!r} is not a directory (needed for "
                          f"{str(path)!r})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option}: cannot write into {str(parent)!r} (permission denied)")


def check_tree(root: Path, files: Mapping[PurePosixPath, object], option: str) -> None:
    """check_output for every file a write_tree(root, files) would write."""
    for rel in sorted(files):
        if rel.is_absolute() or ".." in rel.parts:
            raise OutputError(f"{option}: refusing to write outside {root}: {rel}")
        check_output(root.joinpath(*rel.parts), option)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_tree(root: Path, files: Mapping[PurePosixPath, str]) -> list[Path]:
    """Write rendered files under ``root`` at their guest paths; return what was written."""
    written = []
    for rel, content in sorted(files.items()):
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"refusing to write outside {root}: {rel}")
        target = root.joinpath(*rel.parts)
        write_atomic(target, content.encode("utf-8"), file_mode(str(rel)))
        written.append(target)
    return written
