"""The fuzz suite's ``output-paths`` category: valid inputs, hostile output paths.

Each input is a fresh scenario directory: the input documents (an instance document, or
network_data.json with meta_data.json, from tests/cases), an "outside" sentinel directory
that nothing may touch unless the user's own path leads there, and one hazard planted on
the way of ``render --out DIR``, ``render --system-metadata-out FILE`` or ``drive --out
FILE``: a FIFO, a character device (mknod 1,3: /dev/null's numbers, made in the scenario
directory), a socket, a symlink to the outside directory, to an outside file, to a FIFO
or device, or dangling, at every level (the output itself, its parent, each directory of
the render tree, each file of it), a directory or a regular file where the other must
be, a read-only directory (a read-only tmpfs as root, where mode 0555 does not stop
anyone), a missing chain of directories, the input itself or a hard link to it as the
output, the system metadata inside the tree. Benign variants (absent, existing files, a
symlinked --out DIR or parent: the user's own path) are mixed in.

Oracle, for every input, through the real CLI in process:

* never a traceback, never a hang (20 s alarm; nothing may open a FIFO), the exit status
  0, 1 or 2, and a non-zero exit has a ``netinject:`` message;
* exit 1 or 2: every entry of the scenario (and of the read-only mount) exactly as
  before: type, bytes, link target, device numbers, inode of special files
  (``partial_writes`` otherwise);
* exit 0: every change is an intended output, a regular file with the golden bytes (the
  case's expected tree and system metadata; a drive image with its magic), or a
  directory created on the way to one; no FIFO, device, socket, directory or input
  replaced, no temporary file left (``injections`` otherwise; a write outside the
  intended place counts there);
* the exit status is the one the hazard calls for (exit 2 naming the option; or exit 0
  where the path is legitimate: a symlink AT a render tree file is replaced, the user's
  own directory may be a symlink): ``wrong_verdicts`` otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from netinject.cli import main
from netinject.guest.contract import file_mode

CASES = Path(__file__).resolve().parent.parent / "cases"
INSTANCE_CASES = ["seed", "multi-nic-reordered", "dual-stack", "no-gateway"]
IS_ROOT = os.geteuid() == 0
ALARM_S = 20

Entry = tuple[Any, ...]


class Hang(Exception):
    pass


def _alarm(_signum: int, _frame: object) -> None:
    raise Hang


def snapshot(*roots: Path) -> dict[str, Entry]:
    """Every entry under the roots (links not followed, nothing opened but regular
    files): path -> (type, what identifies its content)."""
    out: dict[str, Entry] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                m = st.st_mode
                if stat.S_ISREG(m):
                    if st.st_size > 1 << 20:  # a drive image: not re-read
                        out[p] = ("file", st.st_size, st.st_ino, stat.S_IMODE(m))
                    else:
                        with open(p, "rb") as fh:  # a regular file (lstat): never blocks
                            digest = hashlib.sha256(fh.read()).hexdigest()
                        out[p] = ("file", digest, stat.S_IMODE(m))
                elif stat.S_ISDIR(m):
                    out[p] = ("dir", stat.S_IMODE(m))
                elif stat.S_ISLNK(m):
                    out[p] = ("link", os.readlink(p))
                else:
                    out[p] = ("special", stat.S_IFMT(m), st.st_rdev, st.st_ino)
    return out


@dataclass
class Plan:
    """One scenario: the command, what the planted hazard calls for, and the outputs it
    may write (resolved path -> exact bytes and mode; bytes None: a drive image)."""

    argv: list[str]
    expect: str  # "refuse" (exit 2) or "write" (exit 0)
    option: str  # what a refusal must name
    what: str
    outputs: dict[str, tuple[bytes | None, int]] = field(default_factory=dict)
    inputs: list[Path] = field(default_factory=list)
    drive_format: str = ""


# -- planting hazards ----------------------------------------------------------------------


def _special(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "chr":
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    elif kind == "sock":
        s = socket.socket(socket.AF_UNIX)
        try:
            with contextlib.chdir(path.parent):  # a relative name: paths pass 108 bytes
                s.bind(path.name)
        finally:
            s.close()
    else:
        raise ValueError(kind)


SPECIALS = ["fifo", "chr", "sock"] if IS_ROOT else ["fifo", "sock"]


class Scene:
    """A scenario directory: inputs, the outside sentinel, devices to point at."""

    def __init__(self, root: Path, rng: random.Random, ro: Path | None) -> None:
        self.root = root
        self.rng = rng
        self.ro = ro
        self.outside = root / "outside"
        for rel, text in (("etc/network/interfaces", "# the host's own\n"),
                          ("etc/hostname", "host\n"), ("secret", "do not touch\n"),
                          ("network/interfaces", "# also the host's\n")):
            (self.outside / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.outside / rel).write_text(text)
        self.devs = root / "devs"
        for kind in SPECIALS:
            _special(self.devs / kind, kind)
        self.inputs: list[Path] = []
        self.argv_in: list[str] = []
        self.files: dict[str, bytes] = {}
        self.sysmeta: bytes | None = None

    def choose_input(self) -> None:
        src = self.root / "in"
        src.mkdir()
        if self.rng.random() < 0.75:
            case = CASES / self.rng.choice(INSTANCE_CASES)
            doc = src / "instance.json"
            shutil.copyfile(case / "instance.json", doc)
            self.inputs = [doc]
            self.argv_in = [str(doc)]
            golden = json.loads((case / "system_metadata.out.json").read_text())
            self.sysmeta = (json.dumps(golden, indent=2, sort_keys=True) + "\n").encode()
        else:
            case = CASES / "network-data"
            nd, md = src / "network_data.json", src / "meta_data.json"
            shutil.copyfile(case / "network_data.json", nd)
            shutil.copyfile(case / "meta_data.json", md)
            self.inputs = [nd, md]
            self.argv_in = ["--network-data", str(nd), "--meta-data", str(md)]
        expected = case / "expected"
        self.files = {str(p.relative_to(expected)): p.read_bytes()
                      for p in sorted(expected.rglob("*")) if p.is_file()}

    def pointee(self) -> Path:
        """Where a hostile symlink points: outside, at a device, or nowhere."""
        return self.rng.choice([
            self.outside, self.outside / "etc", self.outside / "network",
            self.outside / "secret", self.outside / "etc/hostname",
            self.outside / "no-such", *(self.devs / k for k in SPECIALS)])

    def move_input_to(self, path: Path, argv: list[str]) -> list[str]:
        """Put an input at ``path`` (the output): the command then reads it there."""
        victim = self.rng.choice(self.inputs)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(victim, path)
        self.inputs[self.inputs.index(victim)] = path
        return [str(path) if a == str(victim) else a for a in argv]


def _real(path: Path) -> str:
    """Where a file the user names lands: its directory resolved, its name as given."""
    return os.path.join(os.path.realpath(path.parent), path.name)


FILE_HAZARDS = ["absent", "missing-chain", "regular", "input-itself", "hardlink-input",
                "symlink", "special", "dir", "parent-special", "parent-file",
                "parent-dangling", "parent-symlink-outside", "read-only", "mode-0555"]


def plant_file(scene: Scene, path: Path, argv: list[str], option: str
               ) -> tuple[Path, list[str], str, str]:
    """A hazard at a file output ``path`` (the user's): the path to give, the argv (an
    input may have moved), the verdict and what was planted."""
    rng = scene.rng
    hazard = rng.choice(FILE_HAZARDS)
    path.parent.mkdir(parents=True, exist_ok=True)
    if hazard == "absent":
        return path, argv, "write", hazard
    if hazard == "missing-chain":
        return path.parent / "a" / "b" / path.name, argv, "write", hazard
    if hazard == "regular":
        path.write_text("previous\n")
        return path, argv, "write", hazard
    if hazard == "input-itself":
        return path, scene.move_input_to(path, argv), "refuse", hazard
    if hazard == "hardlink-input":
        os.link(rng.choice(scene.inputs), path)
        return path, argv, "refuse", hazard
    if hazard == "symlink":
        target = scene.pointee()
        path.symlink_to(target)
        return path, argv, "refuse", f"symlink to {target.relative_to(scene.root)}"
    if hazard == "special":
        kind = rng.choice([*SPECIALS, "dir-full"])
        if kind == "dir-full":
            (path / "x").mkdir(parents=True)
        else:
            _special(path, kind)
        return path, argv, "refuse", f"a {kind} at the output"
    if hazard == "dir":
        path.mkdir()
        return path, argv, "refuse", hazard
    if hazard == "parent-special":
        kind = rng.choice(SPECIALS)
        _special(path.parent / "p", kind)
        return path.parent / "p" / path.name, argv, "refuse", f"parent is a {kind}"
    if hazard == "parent-file":
        (path.parent / "p").write_text("a file\n")
        return path.parent / "p" / path.name, argv, "refuse", hazard
    if hazard == "parent-dangling":
        (path.parent / "p").symlink_to(scene.outside / "no-such-dir")
        return path.parent / "p" / path.name, argv, "refuse", hazard
    if hazard == "parent-symlink-outside":
        (path.parent / "p").symlink_to(scene.outside)
        return path.parent / "p" / path.name, argv, "write", hazard
    if hazard == "read-only" and scene.ro is not None:
        return scene.ro / rng.choice(["dir", "."]) / path.name, argv, "refuse", hazard
    # mode 0555: root writes anyway (so exit 0 is right); anyone else is refused.
    d = path.parent / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d / path.name, argv, "write" if IS_ROOT else "refuse", "mode-0555"


ROOT_HAZARDS = ["absent", "empty", "previous-tree", "symlink-to-dir", "symlink-outside",
                "dangling", "special", "file", "parent-special", "parent-symlink-outside",
                "missing-chain", "read-only", "mode-0555"]
TREE_DIR_HAZARDS = ["symlink", "symlink-inside", "special", "file", "real-dir", "mode-0555"]
TREE_FILE_HAZARDS = ["symlink", "special", "dir", "input-itself", "hardlink-input",
                     "regular"]


def _previous_tree(scene: Scene, d: Path) -> None:
    for rel in scene.rng.sample(sorted(scene.files), k=min(3, len(scene.files))):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text("previous\n")


def plant_tree(scene: Scene, argv: list[str]) -> tuple[Path, list[str], str, str]:
    """A hazard at --out DIR, at one of the tree's directories or at one of its files."""
    rng = scene.rng
    out = scene.root / "out"
    where = rng.choice(["root", "dir", "file"])
    if where == "root":
        hazard = rng.choice(ROOT_HAZARDS)
        if hazard == "absent":
            return out, argv, "write", "--out absent"
        if hazard == "empty":
            out.mkdir()
            return out, argv, "write", "--out empty"
        if hazard == "previous-tree":
            _previous_tree(scene, out)
            return out, argv, "write", "--out holds a previous tree"
        if hazard == "symlink-to-dir":
            real = scene.root / "real"
            _previous_tree(scene, real)
            out.symlink_to(real)
            return out, argv, "write", "--out is a symlink to a directory"
        if hazard == "symlink-outside":
            out.symlink_to(scene.outside)
            return out, argv, "write", "--out is a symlink to the outside directory"
        if hazard == "dangling":
            out.symlink_to(scene.outside / "no-such-dir")
            return out, argv, "refuse", "--out is a dangling symlink"
        if hazard in ("special", "file"):
            kind = rng.choice(SPECIALS) if hazard == "special" else "file"
            if kind == "file":
                out.write_text("a file\n")
            else:
                _special(out, kind)
            return out, argv, "refuse", f"--out is a {kind}"
        if hazard == "parent-special":
            kind = rng.choice(SPECIALS)
            _special(scene.root / "p", kind)
            return scene.root / "p" / "out", argv, "refuse", f"--out's parent is a {kind}"
        if hazard == "parent-symlink-outside":
            (scene.root / "p").symlink_to(scene.outside)
            return scene.root / "p" / "out", argv, "write", "--out's parent links outside"
        if hazard == "missing-chain":
            return scene.root / "a" / "b" / "out", argv, "write", "--out in missing dirs"
        if hazard == "read-only" and scene.ro is not None:
            return (scene.ro / rng.choice(["dir", "new"]), argv, "refuse",
                    "--out on a read-only filesystem")
        out.mkdir()
        _previous_tree(scene, out)
        out.chmod(0o555)
        for d in sorted({p for rel in scene.files for p in (out / rel).parents
                         if out in p.parents or p == out}):
            if d.is_dir():
                d.chmod(0o555)
        return out, argv, "write" if IS_ROOT else "refuse", "--out tree mode 0555"
    out.mkdir()
    if rng.random() < 0.5:
        _previous_tree(scene, out)
    if where == "dir":
        dirs = sorted({str(PurePosixPath(rel).parents[i]) for rel in scene.files
                       for i in range(len(PurePosixPath(rel).parts) - 1)})
        rel_dir = rng.choice(dirs)
        d = out / rel_dir
        if d.exists():
            shutil.rmtree(d)
        d.parent.mkdir(parents=True, exist_ok=True)
        hazard = rng.choice(TREE_DIR_HAZARDS)
        if hazard == "symlink":
            target = scene.pointee()
            d.symlink_to(target)
            return out, argv, "refuse", f"{rel_dir} links to {target.relative_to(scene.root)}"
        if hazard == "symlink-inside":
            (out / "elsewhere").mkdir(exist_ok=True)
            d.symlink_to(out / "elsewhere")
            return out, argv, "refuse", f"{rel_dir} links inside --out"
        if hazard in ("special", "file"):
            kind = rng.choice(SPECIALS) if hazard == "special" else "file"
            if kind == "file":
                d.write_text("a file\n")
            else:
                _special(d, kind)
            return out, argv, "refuse", f"{rel_dir} is a {kind}"
        d.mkdir()
        if hazard == "real-dir":
            return out, argv, "write", f"{rel_dir} exists"
        d.chmod(0o555)
        return out, argv, "write" if IS_ROOT else "refuse", f"{rel_dir} mode 0555"
    rel = rng.choice(sorted(scene.files))
    t = out / rel
    if t.exists():
        t.unlink()
    t.parent.mkdir(parents=True, exist_ok=True)
    hazard = rng.choice(TREE_FILE_HAZARDS)
    if hazard == "symlink":
        target = scene.pointee()
        t.symlink_to(target)
        return out, argv, "write", f"{rel} links to {target.relative_to(scene.root)}"
    if hazard == "special":
        kind = rng.choice(SPECIALS)
        _special(t, kind)
        return out, argv, "refuse", f"{rel} is a {kind}"
    if hazard == "dir":
        (t / "x").mkdir(parents=True)
        return out, argv, "refuse", f"{rel} is a directory"
    if hazard == "input-itself":
        return out, scene.move_input_to(t, argv), "refuse", f"{rel} is the input"
    if hazard == "hardlink-input":
        os.link(rng.choice(scene.inputs), t)
        return out, argv, "refuse", f"{rel} is a hard link to the input"
    t.write_text("previous\n")
    return out, argv, "write", f"{rel} exists"


def make_plan(scene: Scene) -> Plan:
    rng = scene.rng
    scene.choose_input()
    argv: list[str]
    if rng.random() < 0.55:
        argv = ["render", *scene.argv_in]
        with_sysmeta = scene.sysmeta is not None and rng.random() < 0.5
        sm_hazard = with_sysmeta and rng.random() < 0.5
        if sm_hazard:
            out = scene.root / "out"
            out.mkdir()
            expect, option, what = "write", "--system-metadata-out", ""
        else:
            out, argv, expect, what = plant_tree(scene, argv)
            option = "--out"
        if with_sysmeta:
            sm = scene.root / "o" / "sysmeta.json"
            if not sm_hazard:
                sm.parent.mkdir(parents=True, exist_ok=True)
            elif rng.random() < 0.15:  # one of the tree's files or dirs, or below a file
                chosen = PurePosixPath(rng.choice(sorted(scene.files)))
                pick = rng.choice([chosen, chosen.parent, chosen / "x"])
                sm = out.joinpath(*pick.parts)
                expect, what = "refuse", f"is {pick} of the tree"
            else:
                sm, argv, expect, what = plant_file(scene, sm, argv, option)
            argv = [*argv, "--system-metadata-out", str(sm)]
        plan = Plan(argv, expect, option, f"{option}: {what}", inputs=scene.inputs)
        if with_sysmeta:
            assert scene.sysmeta is not None
            plan.outputs[_real(sm)] = (scene.sysmeta, 0o644)
        root = os.path.realpath(out)
        for rel, data in scene.files.items():
            plan.outputs[os.path.join(root, rel)] = (data, file_mode(rel))
        plan.argv += ["--out", str(out)]
        return plan
    fmt = rng.choice(["iso9660", "iso9660", "vfat"])
    img, argv, expect, what = plant_file(scene, scene.root / "o" / "d.img",
                                         ["drive", *scene.argv_in], "--out")
    plan = Plan([*argv, "--format", fmt, "--out", str(img)], expect, "--out",
                f"drive --out: {what}", inputs=scene.inputs, drive_format=fmt)
    plan.outputs[_real(img)] = (None, 0o644)
    return plan


# -- running one input ---------------------------------------------------------------------


def _drive_ok(path: str, fmt: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(0x8006)
    if fmt == "vfat":
        return head[510:512] == b"\x55\xaa"
    return head[0x8001:0x8006] == b"CD001"


def check(plan: Plan, rc: int, err: str, before: dict[str, Entry], after: dict[str, Entry],
          inputs_before: dict[Path, bytes]) -> list[tuple[str, str]]:
    """Findings (kind, text) for one run (see the module doc)."""
    found: list[tuple[str, str]] = []
    if rc not in (0, 1, 2) or (rc != 0 and not err.startswith("netinject: ")):
        found.append(("tracebacks", f"exit {rc}: {err[:200]!r}"))
    want = 2 if plan.expect == "refuse" else 0
    if rc != want:
        found.append(("wrong_verdicts", f"exit {rc}, want {want}: {err[:200]!r}"))
    elif rc == 2 and plan.option not in err:
        found.append(("wrong_verdicts", f"the refusal does not name {plan.option}: "
                                        f"{err[:200]!r}"))
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if rc != 0:
        if changed:
            found.append(("partial_writes", f"exit {rc} but changed {changed[:4]}"))
        return found
    ancestors = {str(a) for p in plan.outputs for a in Path(p).parents}
    for p in changed:
        b, a = before.get(p), after.get(p)
        if p in plan.outputs:
            if b is not None and b[0] not in ("file", "link"):
                found.append(("injections", f"replaced {b[0]} {p}"))
        elif not (b is None and a is not None and a[0] == "dir" and p in ancestors):
            found.append(("injections", f"changed outside the outputs: {p}: {b} -> {a}"))
    for p, (data, mode) in plan.outputs.items():
        a = after.get(p)
        if a is None or a[0] != "file" or a[-1] != mode:
            found.append(("injections", f"exit 0 but {p} is {a}"))
        elif data is not None and a[1] != hashlib.sha256(data).hexdigest():
            found.append(("injections", f"{p}: not the expected bytes"))
        elif data is None and not _drive_ok(p, plan.drive_format):
            found.append(("injections", f"{p}: not a {plan.drive_format} image"))
    for src, data in inputs_before.items():
        if not src.is_file() or src.is_symlink() or src.read_bytes() != data:
            found.append(("injections", f"input {src} changed"))
    return found


def _unlock(root: Path) -> None:
    """Undo mode 0555 so the scenario can be removed (links are not followed)."""
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o755)


@contextlib.contextmanager
def scratch_mount(work: Path) -> Iterator[Path]:
    """Where the scenarios live: a private tmpfs as root (fsync costs nothing there, so
    an input costs about what a document input does; links, FIFOs, devices, hard links
    and renames behave as on a disk), else a plain directory. Unmounted afterwards."""
    scratch = work / "scratch"
    scratch.mkdir()
    mounted = False
    if IS_ROOT:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g,mode=0700", "tmpfs",
                               str(scratch)], check=False, capture_output=True)
        mounted = done.returncode == 0
    try:
        yield scratch
    finally:
        if mounted:
            subprocess.run(["umount", str(scratch)], check=True, capture_output=True)


@contextlib.contextmanager
def read_only_mount(work: Path) -> Iterator[Path | None]:
    """A read-only tmpfs holding a directory with a rendered-looking file (root only;
    None otherwise). Unmounted afterwards."""
    if not IS_ROOT:
        yield None
        return
    ro = work / "ro"
    ro.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(ro)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        yield None
        return
    try:
        (ro / "dir/etc").mkdir(parents=True)
        (ro / "dir/etc/hostname").write_text("previous\n")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True,
                       capture_output=True)
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True, capture_output=True)


def output_paths_fuzz(count: int, seed: int, tally_type: Callable[[], Any]) -> Any:
    """``count`` scenarios; a Tally (fuzz.Tally) with the findings."""
    rng = random.Random(seed)
    tally = tally_type()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        with tempfile.TemporaryDirectory(prefix="netinject-fuzz-out-") as tmp, \
                scratch_mount(Path(tmp).resolve()) as work, read_only_mount(work) as ro:
            for n in range(count):
                case = work / f"case{n}"
                case.mkdir()
                try:
                    run_one(Scene(case, random.Random(rng.random()), ro), n, tally,
                            [ro] if ro is not None else [])
                finally:
                    _unlock(case)
                    shutil.rmtree(case)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return tally


def run_one(scene: Scene, n: int, tally: Any, extra_roots: list[Path]) -> None:
    tally.inputs += 1
    plan = make_plan(scene)
    roots = [scene.root, *extra_roots]
    before = snapshot(*roots)
    inputs_before = {p: p.read_bytes() for p in plan.inputs}
    err = io.StringIO()
    signal.alarm(ALARM_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(plan.argv)
    except Hang:
        tally.finding("tracebacks", f"output-paths {n} ({plan.what}): hung")
        return
    except BaseException as exc:
        tally.finding("tracebacks", f"output-paths {n} ({plan.what}): "
                                    f"{type(exc).__name__}: {exc}"[:300])
        return
    finally:
        signal.alarm(0)
    if rc == 0:
        tally.accepted += 1
    else:
        tally.refused += 1
    for kind, text in check(plan, rc, err.getvalue(), before, snapshot(*roots),
                            inputs_before):
        tally.finding(kind, f"output-paths {n} ({plan.what}): {text}")
