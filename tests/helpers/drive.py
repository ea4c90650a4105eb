"""Read config drives back with independent tools (blkid, mtools, pycdlib)."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path


def blkid(image: Path) -> dict[str, str]:
    out = subprocess.run(["blkid", "-o", "export", "-p", str(image)], capture_output=True,
                         text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def vfat_files(image: Path, dest: Path) -> dict[str, bytes]:
    """Copy every file out of a vfat image with mtools' mcopy; {path: bytes}."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mcopy", "-s", "-n", "-i", str(image), "::/*", str(dest)], check=True,
                   env=env, capture_output=True)
    return {str(p.relative_to(dest)): p.read_bytes()
            for p in sorted(dest.rglob("*")) if p.is_file()}


def iso_files(image: Path) -> dict[str, bytes]:
    """Every file of an iso9660 image by its Rock Ridge path, read with pycdlib."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(str(image))
    out: dict[str, bytes] = {}
    try:
        for dirname, _dirs, files in iso.walk(rr_path="/"):
            for name in files:
                path = f"{dirname.rstrip('/')}/{name}"
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, rr_path=path)
                out[path.lstrip("/")] = buf.getvalue()
    finally:
        iso.close()
    return out
