"""Output paths (issue 20): only a regular file, or a path that does not exist, is an
output; nothing below an --out directory is followed through a symlink; an output is
never one of the inputs; a full disk leaves every output as it was.

Each refusal is checked before the first write (exit 2, the option and the path named,
nothing written anywhere, the device or FIFO still what it was); nothing here opens a
FIFO (a test that hangs has found a bug). Every command runs through the real CLI.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CASES, load_case, tree
from netinject import drive as drive_mod
from netinject import hostio
from netinject.cli import main

SEED = CASES / "seed" / "instance.json"
MULTI = CASES / "multi-nic-reordered" / "instance.json"
OTHER = "(an output must be a regular file or not exist)"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, mount)")


def _special(path: Path, kind: str) -> None:
    """A character device like /dev/null (1, 3) or a FIFO at ``path``."""
    if kind == "chr":
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    else:
        os.mkfifo(path)


def _kind(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return stat.S_IFMT(st.st_mode), st.st_rdev


def _listing(root: Path) -> dict[str, str]:
    """Every name under root (hidden ones too) and its type: what a write left behind."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            mode = os.lstat(p).st_mode
            out[str(p.relative_to(root))] = ("link" if stat.S_ISLNK(mode) else
                                             "dir" if stat.S_ISDIR(mode) else
                                             "file" if stat.S_ISREG(mode) else "other")
    return out


KIND_NAMES = {"chr": "a character device", "fifo": "a FIFO"}


@pytest.fixture(params=["chr", "fifo"])
def special_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "chr" and os.geteuid() != 0:
        pytest.skip("mknod needs root")
    return kind


# -- P1: devices and FIFOs are not outputs -------------------------------------------------


def _cmd_drive(x: Path, d: Path) -> list[str]:
    return ["drive", str(SEED), "--out", str(x)]


def _cmd_drive_iso(x: Path, d: Path) -> list[str]:
    return ["drive", str(SEED), "--format", "iso9660", "--out", str(x)]


def _cmd_sysmeta(x: Path, d: Path) -> list[str]:
    return ["render", str(SEED), "--out", str(d), "--system-metadata-out", str(x)]


def _cmd_bundle(x: Path, d: Path) -> list[str]:
    return ["guest-bundle", "--out", str(x)]


SINGLE_FILE_COMMANDS: list[tuple[str, Callable[[Path, Path], list[str]], str]] = [
    ("drive-out", _cmd_drive, "--out"),
    ("drive-iso-out", _cmd_drive_iso, "--out"),
    ("render-system-metadata-out", _cmd_sysmeta, "--system-metadata-out"),
    ("guest-bundle-out", _cmd_bundle, "--out"),
]


@pytest.mark.parametrize(("name", "argv", "option"), SINGLE_FILE_COMMANDS,
                         ids=[c[0] for c in SINGLE_FILE_COMMANDS])
def test_device_or_fifo_as_a_file_output_is_refused(
        name: str, argv: Callable[[Path, Path], list[str]], option: str, special_kind: str,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = tmp_path / "x"
    _special(x, special_kind)
    before = _kind(x)
    out_dir = tmp_path / "out"
    assert main(argv(x, out_dir)) == 2
    assert capsys.readouterr().err == (
        f"netinject: {option}: {str(x)!r} is {KIND_NAMES[special_kind]}, not a regular "
        f"file {OTHER}\n")
    assert _kind(x) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # --out DIR not made


@pytest.mark.parametrize("target", ["etc/hostname", "etc/network/interfaces"])
def test_device_or_fifo_in_the_render_tree_is_refused(
        target: str, special_kind: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    x = out / target
    x.parent.mkdir(parents=True)
    _special(x, special_kind)
    before = _listing(out)
    assert main(["render", str(SEED), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"netinject: --out: {str(x)!r} is {KIND_NAMES[special_kind]}, not a regular file "
        f"{OTHER}\n")
    assert _listing(out) == before
    assert _kind(x)[0] in (stat.S_IFCHR, stat.S_IFIFO)


@needs_root
def test_hotplug_system_metadata_out_device_is_refused_before_the_guest_is_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = tmp_path / "x"
    _special(x, "chr")
    port = tmp_path / "port.json"
    port.write_text(json.dumps(load_case("seed")["ports"][0]))
    assert main(["hotplug", "attach", str(SEED), "--port", str(port), "--qga",
                 str(tmp_path / "no-qga.sock"), "--qmp", str(tmp_path / "no-qmp.sock"),
                 "--system-metadata-out", str(x)]) == 2
    assert capsys.readouterr().err == (
        f"netinject: --system-metadata-out: {str(x)!r} is a character device, not a "
        f"regular file {OTHER}\n")


@pytest.fixture
def no_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmarks must not start (their outputs are refused first): each would boot
    guests or build drives for minutes."""
    from netinject.bench import agent, boot, vendordata
    from netinject.bench import drive as bench_drive

    def started(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the benchmark started: its output was not checked first")

    for mod, name in ((boot, "run"), (agent, "agent_costs"), (bench_drive, "run"),
                      (vendordata, "run")):
        monkeypatch.setattr(mod, name, started)


BENCH_CASES = [
    (["bench", "drive", "--runs", "1"], "--json"),
    (["bench", "boot", "--runs", "1"], "--json"),
    (["bench", "boot", "--runs", "1"], "--plot"),
    (["bench", "boot", "--runs", "1"], "--timeline"),
    (["bench", "agent", "--runs", "1"], "--json"),
    (["bench", "vendordata"], "--json"),
]


@needs_root
@pytest.mark.parametrize(("argv", "option"), BENCH_CASES,
                         ids=[f"{a[1]}{o}" for a, o in BENCH_CASES])
def test_bench_output_device_is_refused_before_the_benchmark(
        argv: list[str], option: str, tmp_path: Path, no_benchmark: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    x = tmp_path / "x"
    _special(x, "chr")
    assert main([*argv, option, str(x)]) == 2
    assert capsys.readouterr().err == (
        f"netinject: {option}: {str(x)!r} is a character device, not a regular file "
        f"{OTHER}\n")
    assert _kind(x)[0] == stat.S_IFCHR


def test_image_build_out_fifo_is_refused_before_building(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from netinject.vm import image

    def build(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an image build started: --out was not checked first")

    monkeypatch.setattr(image, "build_variant", build)
    out = tmp_path / "images"
    out.mkdir()
    x = out / "vmlinuz-networkd"
    _special(x, "fifo")
    assert main(["image", "build", "--variant", "dhcp", "--variant", "networkd",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"netinject: --out: {str(x)!r} is a FIFO, not a regular file {OTHER}\n")
    assert _listing(out) == {"vmlinuz-networkd": "other"}


def test_drive_out_symlink_is_refused_not_replaced_or_followed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file the user names must be the file itself: a link named /dev/stdout (or one a
    stranger left in /tmp) is neither replaced nor written through."""
    real = tmp_path / "real.img"
    real.write_bytes(b"keep")
    link = tmp_path / "link.img"
    link.symlink_to(real)
    assert main(["drive", str(SEED), "--out", str(link)]) == 2
    assert capsys.readouterr().err == (
        f"netinject: --out: {str(link)!r} is a symbolic link: give the file itself (an "
        "output is replaced, never written through a link)\n")
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert real.read_bytes() == b"keep"


def test_target_that_becomes_a_fifo_after_the_check_is_not_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rename is preceded by a last look at the target: a FIFO made there after the
    checks (another process) is left alone, and the staged image is removed."""
    out = tmp_path / "d.img"
    real_build = drive_mod.build_vfat

    def build_then_race(data: Any, tmp: Path, vol: int, *args: Any) -> None:
        real_build(data, tmp, vol, *args)
        os.mkfifo(out)

    monkeypatch.setattr(drive_mod, "build_vfat", build_then_race)
    from netinject.sources.neutron import parse_document

    instance = parse_document(load_case("seed")).instance
    with pytest.raises(hostio.OutputError, match="is a FIFO, not a regular file"):
        drive_mod.build(instance, out)
    assert stat.S_ISFIFO(os.lstat(out).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.img"]


def test_tree_target_that_becomes_a_device_after_the_check_is_not_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Same for the render tree: etc/hostname turned into a FIFO while the files are
    staged; the whole tree is left as it was (nothing of it written)."""
    out = tmp_path / "out"
    real_fsync = os.fsync
    raced: list[bool] = []

    def fsync_then_race(fd: int) -> None:
        real_fsync(fd)
        if not raced:
            raced.append(True)
            os.mkfifo(out / "etc/hostname")

    monkeypatch.setattr(os, "fsync", fsync_then_race)
    assert main(["render", str(SEED), "--out", str(out)]) == 2
    monkeypatch.undo()
    assert capsys.readouterr().err == (
        f"netinject: {str(out / 'etc/hostname')!r} is a FIFO, not a regular file {OTHER}\n")
    assert _listing(out) == {"etc": "dir", "etc/hostname": "other"}


# -- P3: an output is never an input -------------------------------------------------------


def _inputs(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "in"
    src.mkdir()
    paths = {"instance": src / "instance.json", "nd": src / "network_data.json",
             "md": src / "meta_data.json"}
    shutil.copyfile(SEED, paths["instance"])
    shutil.copyfile(CASES / "network-data/network_data.json", paths["nd"])
    paths["md"].write_text(json.dumps({"uuid": "6f1d4c5e-8d0a-4c3b-9f5e-2a7b1c9d0e11",
                                       "hostname": "web-1"}))
    return paths


SAME_AS_INPUT: list[tuple[str, list[str], str, str]] = [
    ("drive-out-instance", ["drive", "{instance}", "--out", "{instance}"], "--out",
     "instance"),
    ("drive-out-network-data", ["drive", "--network-data", "{nd}", "--out", "{nd}"], "--out",
     "nd"),
    ("drive-out-meta-data", ["drive", "--network-data", "{nd}", "--meta-data", "{md}",
                             "--out", "{md}"], "--out", "md"),
    ("render-sysmeta-instance", ["render", "{instance}", "--out", "{dir}",
                                 "--system-metadata-out", "{instance}"],
     "--system-metadata-out", "instance"),
    ("render-tree-holds-the-input", ["render", "{dir}/etc/hostname", "--out", "{dir}"],
     "--out", "tree"),
]


@pytest.mark.parametrize(("name", "argv", "option", "victim"), SAME_AS_INPUT,
                         ids=[c[0] for c in SAME_AS_INPUT])
def test_output_that_is_an_input_is_refused(name: str, argv: list[str], option: str,
                                            victim: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    paths = _inputs(tmp_path)
    out = tmp_path / "out"
    if victim == "tree":
        (out / "etc").mkdir(parents=True)
        shutil.copyfile(SEED, out / "etc/hostname")
        paths["tree"] = out / "etc/hostname"
    before = {k: p.read_bytes() for k, p in paths.items()}
    listing = _listing(tmp_path)
    args = [a.format(dir=out, **{k: str(v) for k, v in paths.items()}) for a in argv]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"netinject: {option}: {str(paths[victim])!r} is the input file "
        f"{str(paths[victim])!r}: refusing to replace it\n")
    assert {k: p.read_bytes() for k, p in paths.items()} == before
    assert _listing(tmp_path) == listing


def test_output_that_is_a_hard_link_to_the_input_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "instance.json"
    shutil.copyfile(SEED, src)
    link = tmp_path / "d.img"
    os.link(src, link)
    assert main(["drive", str(src), "--out", str(link)]) == 2
    assert capsys.readouterr().err == (
        f"netinject: --out: {str(link)!r} is the input file {str(src)!r}: refusing to "
        "replace it\n")
    assert src.read_bytes() == SEED.read_bytes()
    assert os.path.samefile(src, link)


def test_system_metadata_out_inside_the_out_tree_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    sm = out / "etc/hostname"
    assert main(["render", str(SEED), "--out", str(out), "--system-metadata-out",
                 str(sm)]) == 2
    assert capsys.readouterr().err == (
        f"netinject: --system-metadata-out: {str(sm)!r} is also a path of the --out tree "
        "(etc/hostname)\n")
    assert not out.exists()


# -- render --out: no symlink below DIR is followed ----------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the output tree with a file in it: it must not change."""
    d = tmp_path / "outside"
    (d / "network").mkdir(parents=True)
    (d / "network/interfaces").write_text("# the host's own\n")
    (d / "hostname").write_text("host\n")
    return d


def _snapshot(d: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    return tree(d), _listing(d)


@pytest.mark.parametrize(("link", "to"), [("etc", "."), ("etc/network", "network")])
def test_symlinked_directory_below_out_is_refused(
        link: str, to: str, tmp_path: Path, outside: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    (out / link).symlink_to(outside / to)
    before_out, before_outside = _listing(out), _snapshot(outside)
    assert main(["render", str(SEED), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"netinject: --out: {str(out / link)!r} is a symbolic link: netinject follows no "
        f"link below {str(out)!r} (it would write outside it)\n")
    assert _listing(out) == before_out
    assert _snapshot(outside) == before_outside


def test_symlinked_directory_below_out_is_refused_even_inside_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The rule is simple: no link below DIR, wherever it points."""
    out = tmp_path / "out"
    (out / "real-etc").mkdir(parents=True)
    (out / "etc").symlink_to("real-etc")
    assert main(["render", str(SEED), "--out", str(out)]) == 2
    assert "is a symbolic link: netinject follows no link below" in capsys.readouterr().err
    assert _listing(out) == {"real-etc": "dir", "etc": "link"}


def test_out_itself_may_be_a_symlink(tmp_path: Path) -> None:
    """The user's own argument may be a link (their choice of directory)."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "out"
    link.symlink_to(real)
    assert main(["render", str(SEED), "--out", str(link)]) == 0
    assert tree(real) == tree(CASES / "seed" / "expected")
    assert link.is_symlink()


@pytest.mark.parametrize("target", ["etc/hostname", "etc/network/interfaces"])
@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_symlink_at_a_target_file_is_replaced_never_written_through(
        target: str, dangling: bool, tmp_path: Path, outside: Path) -> None:
    out = tmp_path / "out"
    (out / target).parent.mkdir(parents=True)
    pointee = outside / ("nothing-here" if dangling else "hostname")
    (out / target).symlink_to(pointee)
    before_outside = _snapshot(outside)
    assert main(["render", str(SEED), "--out", str(out)]) == 0
    assert _snapshot(outside) == before_outside
    assert not (out / target).is_symlink()
    assert tree(out) == tree(CASES / "seed" / "expected")


# -- P2: a full disk leaves the tree as it was ---------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _fill(mnt: Path, free_pages: int) -> None:
    """Fill the filesystem, then free exactly ``free_pages`` pages."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with pytest.raises(OSError, match="No space left on device"):  # noqa: PT012
            while True:  # until it is full
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    pages = -(-filler.stat().st_size // 4096)
    os.truncate(filler, (pages - free_pages) * 4096)


def _enospc_message(err: str, out: Path) -> None:
    assert err.startswith(f"netinject: error: writing {out}/"), err
    assert err.endswith(": No space left on device; nothing was changed (every output is "
                        "as it was)\n"), err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_full_disk_during_render_leaves_no_partial_tree(
        small_fs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = small_fs / "out"
    _fill(small_fs, 3)
    assert main(["render", str(MULTI), "--out", str(out)]) == 1
    _enospc_message(capsys.readouterr().err, out)
    assert _listing(small_fs) == {"filler": "file"}


def test_full_disk_during_render_keeps_the_previous_tree(
        small_fs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = small_fs / "out"
    assert main(["render", str(SEED), "--out", str(out)]) == 0
    capsys.readouterr()
    before, listing = tree(out), _listing(small_fs)
    _fill(small_fs, 2)
    listing["filler"] = "file"
    assert main(["render", str(MULTI), "--out", str(out)]) == 1
    _enospc_message(capsys.readouterr().err, out)
    assert tree(out) == before == tree(CASES / "seed" / "expected")
    assert _listing(small_fs) == listing


def test_full_disk_with_system_metadata_out_changes_neither(
        small_fs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tree and --system-metadata-out land together or not at all."""
    out = small_fs / "out"
    sm = small_fs / "sysmeta.json"
    sm.write_text("old\n")
    _fill(small_fs, len(tree(CASES / "seed" / "expected")))  # room for the tree only
    assert main(["render", str(SEED), "--out", str(out), "--system-metadata-out",
                 str(sm)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert sm.read_text() == "old\n"
    assert _listing(small_fs) == {"filler": "file", "sysmeta.json": "file"}


def test_full_disk_during_iso_drive_leaves_nothing(
        small_fs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = small_fs / "d.iso"
    _fill(small_fs, 2)
    assert main(["drive", str(SEED), "--format", "iso9660", "--out", str(img)]) == 1
    assert capsys.readouterr().err == (
        f"netinject: error: writing {img}: No space left on device; nothing was changed "
        "(every output is as it was)\n")
    assert _listing(small_fs) == {"filler": "file"}


def test_other_os_errors_become_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's last line of defence: any OSError is a one-line message, exit 1."""
    from netinject.cli.commands import render as render_cmd

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", "/some/where")

    monkeypatch.setattr(render_cmd, "render", broken)
    assert main(["render", str(SEED), "--print"]) == 1
    assert capsys.readouterr().err == "netinject: error: /some/where: Permission denied\n"
