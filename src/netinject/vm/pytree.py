"""Debian's Python of other releases, for running the guest agent's tests on them.

The agent claims Python 3.9 or newer; the test-bed images are bookworm (3.11). A minimal
tree of bullseye (3.9) or trixie (3.13), built with mmdebstrap from the mirrors this
machine's apt already uses (the same URIs, the other release's suite names), gives the
interpreter Debian ships there. It runs on this host without chroot, so the tests' temp
trees stay visible: the tree's own dynamic loader and libraries run its python3.X (trixie's
binaries need a newer glibc than bookworm's). A generated wrapper script in the cache
directory is the interpreter path the tests use (``NETINJECT_GUEST_PYTHON``).

``python -m netinject.vm.pytree RELEASE`` builds (once, cached) and prints the wrapper.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_dir
from .image import DPKG_EXCLUDES, SUITE, ImageBuildError, Progress, _run, apt_sources

# Release -> the Python version Debian ships in it.
RELEASES = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
# The full python3 (not python3-minimal): the metadata sync path needs json, urllib and
# http from libpython3.X-stdlib, and every test of the agent must be able to run.
PACKAGES = ("python3",)
TREE_VERSION = 1
LOADER = "lib64/ld-linux-x86-64.so.2"
LIBRARY_PATH = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")


@dataclass(frozen=True)
class PythonTree:
    release: str
    version: str
    root: Path
    python: Path  # the wrapper script: an interpreter path for subprocesses


def _deb822(text: str) -> list[dict[str, str]]:
    """The stanzas of a deb822 .sources file (comments dropped, continuations joined)."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    field = ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, field = {}, ""
        elif line[0] in " \t" and field:
            current[field] += "\n" + line.strip()
        elif ":" in line:
            field, _, value = line.partition(":")
            field = field.strip().lower()
            current[field] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _entries() -> list[tuple[str, str, str, list[str]]]:
    """(options, URI, suite, components) of every binary source this machine's apt uses,
    one-line (.list) and deb822 (.sources) alike."""
    out: list[tuple[str, str, str, list[str]]] = []
    for path in apt_sources():
        text = path.read_text()
        if path.suffix == ".sources":
            for st in _deb822(text):
                if "deb" not in st.get("types", "").split() \
                        or st.get("enabled", "yes").lower() == "no":
                    continue
                signed = st.get("signed-by", "")
                # A path to a keyring is kept; an inline key block is not (mmdebstrap
                # then uses the host's trusted keys).
                opts = f"[signed-by={signed}]" if signed and "\n" not in signed \
                    and signed.startswith("/") else ""
                for uri in st.get("uris", "").split():
                    for suite in st.get("suites", "").split():
                        out.append((opts, uri, suite, st.get("components", "").split()))
        else:
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                m = re.match(r"deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
                if m:
                    out.append(((m.group(1) or "").strip(), m.group(2), m.group(3),
                                m.group(4).split()))
    return out


def release_sources(release: str) -> list[str]:
    """One-line sources for ``release``: this machine's entries for its own suite
    (bookworm, bookworm-updates, bookworm-security, ...) with the release's name instead.
    Sources of other suites (third-party repositories) are left out."""
    lines = []
    for opts, uri, suite, components in _entries():
        if suite != SUITE and not suite.startswith(SUITE + "-"):
            continue
        renamed = release + suite[len(SUITE):]
        lines.append(" ".join(x for x in ("deb", opts, uri, renamed, *components) if x))
    return lines


def tree_key(release: str) -> str:
    recipe = {"release": release, "version": TREE_VERSION, "packages": PACKAGES,
              "excludes": DPKG_EXCLUDES}
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    for src in apt_sources():
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def in_tree(root: Path, rel: str) -> Path:
    """``rel`` inside the tree with its symlinks resolved as the tree sees them (an
    absolute link target is inside the tree, not on this host: bullseye's
    lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/ld-2.31.so)."""
    parts = [p for p in rel.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        if part == ".":
            continue
        path = root.joinpath(*done, part)
        if path.is_symlink():
            hops += 1
            if hops > 40:
                raise ImageBuildError(f"symlink loop at {path}")
            target = str(path.readlink())
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
        else:
            done.append(part)
    return root.joinpath(*done)


def wrapper_text(root: Path, version: str) -> str:
    loader = in_tree(root, LOADER)
    libs = ":".join(str(in_tree(root, d)) for d in LIBRARY_PATH)
    python = in_tree(root, f"usr/bin/python{version}")
    return (f"#!/bin/sh\n"
            f"# Generated by netinject.vm.pytree: Debian's Python {version} from the tree\n"
            f"# {root}, run with the tree's own loader and libraries (no chroot).\n"
            f"exec '{loader}' --library-path '{libs}' '{python}' \"$@\"\n")


def check_interpreter(python: Path, version: str) -> None:
    """The wrapper runs the claimed version and imports what the agent uses."""
    code = ("import sys, hashlib, json, urllib.request, http.client, fcntl, zipfile\n"
            "print('%d.%d' % sys.version_info[:2])")
    try:
        done = subprocess.run([str(python), "-I", "-S", "-c", code], capture_output=True,
                              text=True, check=False, timeout=60)
    except OSError as exc:
        raise ImageBuildError(f"{python} does not run: {exc}") from None
    if done.returncode != 0 or done.stdout.strip() != version:
        raise ImageBuildError(f"{python} is not a working Python {version} "
                              f"(exit {done.returncode}): {done.stdout}{done.stderr}".strip())


def build_python_tree(release: str, progress: Progress, cache: Path | None = None) -> PythonTree:
    """The cached minimal tree of ``release`` with its python3; built if missing."""
    if release not in RELEASES:
        raise ImageBuildError(f"unknown release {release!r} (known: {', '.join(RELEASES)})")
    version = RELEASES[release]
    key = tree_key(release)
    top = (cache or cache_dir()) / f"python-{release}-{key}"
    root, wrapper = top / "root", top / f"python{version}"
    if (top / "done").exists():
        text = wrapper_text(root, version)
        if not wrapper.is_file() or wrapper.read_text() != text:
            wrapper.write_text(text)  # written by an older netinject
            wrapper.chmod(0o755)
        progress(f"python tree {release} {key}: cached")
        return PythonTree(release, version, root, wrapper)
    sources = release_sources(release)
    if not sources:
        raise ImageBuildError(f"no apt source of this machine names the suite {SUITE}: "
                              f"cannot derive the mirrors for {release}")
    top.mkdir(parents=True, exist_ok=True)
    tmp = top / "root.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    args = ["mmdebstrap", "--mode=root", "--variant=minbase",
            "--aptopt=APT::Install-Recommends \"false\"",
            *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
            f"--include={','.join(PACKAGES)}", release, str(tmp), *sources]
    progress(f"building python tree {release} {key} with mmdebstrap (Python {version}; "
             f"about a minute, once)")
    start = time.monotonic()
    _run(args, f"mmdebstrap {release}", top / "mmdebstrap.log")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    wrapper.write_text(wrapper_text(root, version))
    wrapper.chmod(0o755)
    check_interpreter(wrapper, version)
    (top / "done").write_text(key + "\n")
    progress(f"python tree {release} {key}: built in {time.monotonic() - start:.0f} s")
    for stale in top.parent.glob(f"python-{release}-*"):
        if stale != top:
            progress(f"removing the outdated python tree {stale.name}")
            shutil.rmtree(stale, ignore_errors=True)
    return PythonTree(release, version, root, wrapper)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in RELEASES:
        print(f"usage: python -m netinject.vm.pytree {{{','.join(RELEASES)}}}", file=sys.stderr)
        return 2
    try:
        tree = build_python_tree(args[0], lambda m: print(m, file=sys.stderr, flush=True))
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(tree.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
