"""The fuzz suite's ``image-tree`` category: ``netinject-guest install`` and ``uninstall``
on hostile image trees (issue 20, A1).

Each input is a Debian-shaped image tree (systemd or sysvinit; ifupdown, networkd,
netplan, NetworkManager or no stack; sometimes merged-usr, sometimes with the
persistent-net generator rule or this Python, sometimes already installed) with one to
five hostile changes at paths the installer reads, writes or removes: symlinks to a
sentinel "host" directory outside the image (absolute, or relative ones climbing out
with '..'), links that loop or lead nowhere, FIFOs and character devices where files or
directories are expected, files where directories are, and odd modes. The sentinel has
files with the installer's names in every such directory (and sometimes the image has a
directory of the sentinel's name, so that a re-rooted link finds something inside).
Every absolute link target lies under the sentinel, and every link that climbs above
the image's root goes on to the sentinel: an installer that followed a link out (as
before issue 20's fix) could only reach the sentinel, never this machine's own files.

The installer runs in process (``image.main``, as the bundle runs it) under a 5 s alarm.
Oracle: nothing outside the image is created, modified or deleted (the work directory
beside the image, sentinel included, is compared entry by entry: type, mode, owner,
inode, content, times); no exception escapes (no traceback); the exit status is 0, or 2
with a ``netinject-guest CMD: error:`` message; no hang.

Run alone: ``.venv/bin/python tests/helpers/fuzz.py --inputs 3000 --category image-tree``.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path
from typing import Protocol

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "src"))

from netinject import guest_bundle  # noqa: E402
from netinject.guest import image, stacks  # noqa: E402

PY = "python{}.{}".format(*sys.version_info[:2])  # the installer precompiles for its own Python
TOUCHED_DIRS = [
    "usr", "usr/lib", "usr/lib/netinject", "usr/lib/netinject/__pycache__", "usr/sbin",
    "usr/share/netplan", f"usr/lib/{PY}", "lib", "lib/systemd", "lib/systemd/system",
    "lib/udev", "lib/udev/rules.d", "sbin", "etc", "etc/init.d", "etc/netinject",
    "etc/rcS.d", "etc/netplan", "etc/systemd", "etc/systemd/system",
    "etc/systemd/system/multi-user.target.wants", "etc/udev", "etc/udev/rules.d", "var",
    "var/lib", "var/lib/netinject", "var/lib/netinject/backup"]
TOUCHED_FILES = [
    "sbin/init", "lib/systemd/systemd", "sbin/ifup", "usr/sbin/ifup", "usr/sbin/netplan",
    "usr/sbin/NetworkManager", image.GENERATOR_RULES, image.GENERATOR_OVERRIDE,
    image.MODULE_PATH, image.LAUNCHER_PATH, image.UNIT_PATH, image.ANNOUNCE_UNIT_PATH,
    image.INIT_PATH, stacks.STACK_CONFIG, image.WANTS_LINK, image.ANNOUNCE_WANTS_LINK,
    image.RCS_LINK, "etc/systemd/system/network-manager.service",
    "etc/systemd/system/multi-user.target.wants/networking.service",
    "usr/lib/netinject/__pycache__/netinject_guest.cpython-311.pyc",
    "usr/sbin/.netinject-guest.netinject-tmp", "etc/init.d/.netinject.netinject-tmp",
    "etc/udev/rules.d/.75-persistent-net-generator.rules.netinject-tmp"]
GENERATOR = """\
SUBSYSTEM!="net", GOTO="persistent_net_generator_end"
ENV{MATCHADDR}=="?[2367abef]:*",        ENV{MATCHADDR}=""
LABEL="globally_administered_whitelist"
RUN+="write_net_rules"
LABEL="persistent_net_generator_end"
"""
STACKS = ["ifupdown", "networkd", "netplan", "nm", None]


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


# -- building an input ---------------------------------------------------------------------


def _real_parents(img: Path, rel: str) -> bool:
    """Make the directories on the way to ``rel`` (inside ``img``); False when one of
    them is not a real directory (then the change is not made there)."""
    cur = img
    for part in rel.split("/")[:-1]:
        cur = cur / part
        if cur.is_symlink() or (cur.exists() and not cur.is_dir()):
            return False
        if not os.path.lexists(cur):
            cur.mkdir()
    return True


def _clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _base(rng: random.Random, img: Path) -> tuple[str, str | None]:
    init = rng.choice(["systemd", "systemd", "sysvinit"])
    stack = rng.choice(STACKS)
    merged = rng.random() < 0.3
    lib, sbin = ("usr/lib", "usr/sbin") if merged else ("lib", "sbin")
    for d in (f"{lib}/systemd/system", sbin, "usr/sbin", "etc/init.d",
              "etc/systemd/system/multi-user.target.wants"):
        (img / d).mkdir(parents=True, exist_ok=True)
    if merged:
        (img / "lib").symlink_to("usr/lib")
        (img / "sbin").symlink_to("usr/sbin")
    wants = img / "etc/systemd/system/multi-user.target.wants"
    if init == "systemd":
        (img / f"{lib}/systemd/systemd").write_bytes(b"\x7fELF systemd")
        (img / f"{sbin}/init").symlink_to("/lib/systemd/systemd")
    else:
        (img / f"{sbin}/init").write_bytes(b"\x7fELF sysvinit")
    if stack == "ifupdown":
        (img / f"{sbin}/ifup").write_bytes(b"\x7fELF ifup")
        (wants / "networking.service").symlink_to("/lib/systemd/system/networking.service")
    elif stack == "networkd":
        (wants / "systemd-networkd.service").symlink_to(
            "/lib/systemd/system/systemd-networkd.service")
    elif stack == "netplan":
        (img / "usr/sbin/netplan").write_bytes(b"#!/usr/bin/python3\n")
        (img / "etc/netplan").mkdir(parents=True)
    elif stack == "nm":
        (img / "usr/sbin/NetworkManager").write_bytes(b"\x7fELF NM")
        (wants / "NetworkManager.service").symlink_to(
            "/lib/systemd/system/NetworkManager.service")
    if rng.random() < 0.5:
        (img / f"{lib}/udev/rules.d").mkdir(parents=True)
        (img / f"{lib}/udev/rules.d/75-persistent-net-generator.rules").write_text(GENERATOR)
    if rng.random() < 0.05:  # (compiling the agent costs ~70 ms)
        (img / f"usr/lib/{PY}").mkdir(parents=True)
    return init, stack


def _host(host: Path) -> None:
    """The sentinel: every touched directory, with a file of each of our names."""
    for d in TOUCHED_DIRS:
        (host / d).mkdir(parents=True, exist_ok=True)
    for f in TOUCHED_FILES:
        (host / f).parent.mkdir(parents=True, exist_ok=True)
        (host / f).write_text('host file GOTO="globally_administered_whitelist"\n')


CHANGES = ["abs-host", "abs-host-other", "climb-host", "climb-inside", "loop-self",
           "loop-reroot", "loop-pair", "dangling", "fifo", "device", "file-for-dir",
           "dir-for-file", "odd-mode", "link-in-tree"]


def _change(rng: random.Random, img: Path, host: Path) -> str | None:
    """One hostile change at a path the installer touches; its name (None: not made)."""
    rel = rng.choice(TOUCHED_DIRS + TOUCHED_FILES)
    what = rng.choice(CHANGES)
    path = img / rel
    if not _real_parents(img, rel):
        return None
    depth = len(path.parent.parts) - 1  # '..' from the link's directory up to '/'
    if what == "odd-mode":
        if not os.path.lexists(path) or path.is_symlink():
            return None
        path.chmod(rng.choice([0, 0o777, 0o4755, 0o1777, 0o200, 0o444]))
        return what
    _clear(path)
    if what == "abs-host":
        target = f"{host}/{rel}"
    elif what == "abs-host-other":
        target = f"{host}/{rng.choice(TOUCHED_DIRS + TOUCHED_FILES)}"
    elif what == "climb-host":
        # Out of the image and on to the sentinel; kept inside the image, it stops at
        # the image's root and reaches the sentinel's path there (sometimes made).
        target = "../" * (depth + rng.randint(0, 6)) + f"{host}/{rel}"[1:]
    elif what == "climb-inside":  # up to the image's root exactly, and down again
        target = "../" * rel.count("/") + rng.choice(TOUCHED_DIRS)
    elif what == "loop-self":
        target = path.name
    elif what == "loop-reroot":
        # To the sentinel; re-rooted, to a link of the sentinel's name in the image that
        # names itself (a loop only inside the image).
        target = f"{host}/{rel}"
        if _real_parents(img, target[1:]):
            _clear(img / target[1:])
            (img / target[1:]).symlink_to(target)
    elif what == "loop-pair":
        (path.parent / f"{path.name}.loop").unlink(missing_ok=True)
        (path.parent / f"{path.name}.loop").symlink_to(path.name)
        target = f"{path.name}.loop"
    elif what == "dangling":
        target = rng.choice([f"{host}/missing/{rel}", "missing/x", "../missing"])
    elif what == "fifo":
        os.mkfifo(path)
        return what
    elif what == "device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        return what
    elif what == "file-for-dir":
        path.write_bytes(b"junk\n")
        return what
    elif what == "dir-for-file":
        path.mkdir()
        return what
    else:  # link-in-tree: absolute, to a directory the image has (re-rooted: fine)
        target = f"{host}/{rng.choice(TOUCHED_DIRS)}"
    path.symlink_to(target)
    if target.startswith(str(host)) and (what == "link-in-tree" or rng.random() < 0.3):
        # The image has a directory of the sentinel's name: re-rooted, the link finds it.
        inside = img / target[1:]
        if _real_parents(img, target[1:] + "/x") and not os.path.lexists(inside):
            inside.mkdir()
    return what


# -- running an input ----------------------------------------------------------------------


class Counts(Protocol):
    """What the category counts into (fuzz.Tally)."""

    inputs: int
    accepted: int
    refused: int

    def finding(self, kind: str, text: str) -> None: ...


class ImageHang(Exception):
    pass


def _alarm(_signum: int, _frame: object) -> None:
    raise ImageHang


def _run(argv: list[str], agent: bytes, launcher: bytes) -> tuple[int | None, str, str]:
    """``image.main`` as the bundle runs it: (exit status or None on an exception,
    stdout, stderr or the exception)."""
    out, err = io.StringIO(), io.StringIO()
    signal.alarm(5)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = image.main(argv, agent, launcher)
    except ImageHang:
        return None, out.getvalue(), "hung (5 s)"
    except BaseException as exc:
        return None, out.getvalue(), f"{type(exc).__name__}: {exc}"
    finally:
        signal.alarm(0)
    return rc, out.getvalue(), err.getvalue()


def image_fuzz(count: int, seed: int, tally: Counts) -> None:
    """``count`` runs of the installer on hostile trees (seeded), counted into
    ``tally``: accepted (exit 0), refused (exit 2), findings ('tracebacks' for an
    exception, another exit status, a missing message or a hang; 'escapes' for a change
    outside the image)."""
    rng = random.Random(seed)
    agent, launcher = guest_bundle.agent_source(), guest_bundle.launcher_source()
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # fsyncs cost nothing
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        with tempfile.TemporaryDirectory(prefix="netinject-fuzz-image-", dir=shm) as tmp:
            n = 0
            while tally.inputs < count:
                n += 1
                case = Path(tmp) / f"c{n}"
                img, host = case / "img", case / "host"
                img.mkdir(parents=True)
                _host(host)
                _init, stack = _base(rng, img)
                given = [] if stack and rng.random() < 0.7 else [
                    "--stack", rng.choice(["ifupdown", "networkd", "netplan", "nm"])]
                cmds = ["install"]
                if rng.random() < 0.5:  # an installed image: uninstall, or install again
                    _run(["install", "--root", str(img), "--stack", "ifupdown"], agent,
                         launcher)
                    cmds = [rng.choice(["uninstall", "uninstall", "install"])]
                for _ in range(rng.randint(1, 5)):
                    _change(rng, img, host)
                outside = _outside(case)
                while cmds and tally.inputs < count:
                    cmd = cmds.pop(0)
                    argv = [cmd, "--root", str(img), *(given if cmd == "install" else [])]
                    tally.inputs += 1
                    rc, _out, err = _run(argv, agent, launcher)
                    where = f"input {tally.inputs} ({cmd}, seed {seed}, case c{n})"
                    if rc is None or rc not in (0, 2):
                        tally.finding("tracebacks", f"{where}: exit {rc}: {err[-300:]}")
                    elif rc == 2 and f"netinject-guest {cmd}: error: " not in err:
                        tally.finding("tracebacks", f"{where}: exit 2 without a message")
                    elif rc == 2:
                        tally.refused += 1
                    else:
                        tally.accepted += 1
                        if cmd == "install" and rng.random() < 0.5:
                            cmds.append("uninstall")
                    now = _outside(case)
                    if now != outside:
                        changed = sorted(k for k in set(now) | set(outside)
                                         if now.get(k) != outside.get(k))
                        tally.finding("escapes", f"{where}: changed outside the image: "
                                                 f"{changed[:5]}")
                        outside = now
                _remove(case)
    finally:
        signal.signal(signal.SIGALRM, previous)


def _outside(case: Path) -> dict[str, tuple[object, ...]]:
    """Everything in the input's directory but the image: the sentinel, and anything
    created beside them (of the image's root itself: its type and mode)."""
    state = tree_state(case, skip="img")
    state["img"] = state["img"][:2]
    return state


def _remove(case: Path) -> None:
    for dirpath, dirnames, _files in os.walk(case):  # (odd modes: make it removable)
        for d in dirnames:
            p = Path(dirpath) / d
            if not p.is_symlink():
                p.chmod(0o700)
    shutil.rmtree(case)
