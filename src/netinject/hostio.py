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
        write_atomic(target, content.encode("utf-8"))
        written.append(target)
    return written
