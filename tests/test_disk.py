"""netinject image add-agent: the agent put into an existing Debian disk image (raw or
qcow2, ext4 on the whole disk or on a GPT partition) through fuse2fs and, for qcow2,
qemu-storage-daemon; checked with e2fsprogs' own debugfs and e2fsck on the result, and
in a real boot of the test bed's stock image. Bad disks are refused with the disk's
bytes unchanged."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.guest import assert_test_bed_network, copy_sparse
from netinject.cli import main

pytestmark = pytest.mark.root  # (FUSE mounts)

PART_OFFSET = 1024 * 1024


def _tree(tmp: Path, debian: bool = True) -> Path:
    """A small image tree: enough of Debian for the installer with --stack ifupdown."""
    root = tmp / "tree"
    for d in ("etc/network", "lib/systemd/system", "usr/sbin", "usr/lib", "etc/init.d",
              "var/lib"):
        (root / d).mkdir(parents=True, exist_ok=True)
    if debian:
        (root / "etc/debian_version").write_text("12.8\n")
    (root / "etc/network/interfaces").write_text("auto eth0\niface eth0 inet dhcp\n")
    return root


def _ext4(path: Path, tree: Path, offset: int = 0) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", f"offset={offset}", "-d", str(tree),
                    str(path), "48M"], check=True, capture_output=True)


def _gpt_disk(path: Path, tree: Path) -> None:
    """A GPT disk with one Linux partition at 1 MiB holding the ext4 tree."""
    subprocess.run(["truncate", "-s", "64M", str(path)], check=True)
    subprocess.run(["sfdisk", "-q", str(path)], input="label: gpt\nstart=2048, size=98304, "
                   "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n", text=True, check=True)
    _ext4(path, tree, PART_OFFSET)


def _qcow2(raw: Path, out: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out)], check=True)
    return out


def _fs_of(disk: Path, tmp: Path, offset: int = 0) -> Path:
    """The filesystem as a plain file, for debugfs and e2fsck (from a qcow2 through
    qemu-img, from a partition through dd)."""
    raw = tmp / "check.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
    if offset == 0:
        return raw
    fs = tmp / "check.fs"
    subprocess.run(["dd", f"if={raw}", f"of={fs}", "bs=1M", f"skip={offset // 1048576}",
                    "status=none"], check=True)
    return fs


def _debugfs(fs: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(fs)], capture_output=True,
                          text=True, check=True).stdout


def _assert_installed(fs: Path) -> None:
    assert subprocess.run(["e2fsck", "-fn", str(fs)], capture_output=True,
                          check=False).returncode == 0
    assert _debugfs(fs, "cat /etc/netinject/stack") == "ifupdown\n"
    assert "netinject_guest.py" in _debugfs(fs, "ls /usr/lib/netinject")
    launcher = _debugfs(fs, "stat /usr/sbin/netinject-guest")
    assert "Mode:  0755" in launcher
    assert "User:     0   Group:     0" in launcher


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_raw_disk_with_ext4_on_the_whole_disk(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    _ext4(disk, _tree(tmp_path))
    assert main(["image", "add-agent", str(disk), "--stack", "ifupdown"]) == 0
    _assert_installed(_fs_of(disk, tmp_path))


def test_a_qcow2_disk_with_ext4_on_a_gpt_partition(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "disk.raw"
    _gpt_disk(raw, _tree(tmp_path))
    disk = _qcow2(raw, tmp_path / "disk.qcow2")
    assert main(["image", "add-agent", str(disk), "--stack", "ifupdown"]) == 0
    assert "qcow2, Debian root filesystem on partition 1" in capsys.readouterr().err
    _assert_installed(_fs_of(disk, tmp_path, PART_OFFSET))


@pytest.mark.parametrize("case", ["not Debian", "no ext4", "read-only", "vmdk", "directory",
                                  "missing"])
def test_a_bad_disk_is_refused_and_left_untouched(case: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    disk = tmp_path / "disk.img"
    says = {"not Debian": "is not a Debian image (no /etc/debian_version on the whole disk)",
            "no ext4": "has no ext4 filesystem (on the whole disk or a partition)",
            "read-only": "is read-only: nothing was changed",
            "vmdk": "is a vmdk image; add-agent takes raw or qcow2",
            "directory": "is not a regular file",
            "missing": "No such file or directory"}[case]
    if case == "not Debian":
        _ext4(disk, _tree(tmp_path, debian=False))
    elif case == "no ext4":
        _gpt_disk(disk, _tree(tmp_path))
        with open(disk, "r+b") as f:  # the partition's superblock gone: no filesystem
            f.seek(PART_OFFSET + 1024)
            f.write(bytes(1024))
    elif case == "read-only":
        _ext4(disk, _tree(tmp_path))
        disk.chmod(0o444)
    elif case == "vmdk":
        subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(disk), "64M"],
                       check=True)
    elif case == "directory":
        disk.mkdir()
    before = _sha(disk) if disk.is_file() else None
    assert main(["image", "add-agent", str(disk)]) == 2
    err = capsys.readouterr().err
    assert f"DISK: {str(disk)!r}" in err
    assert says in err
    assert "Traceback" not in err
    if before is not None:
        assert _sha(disk) == before


@pytest.mark.e2e
def test_the_stock_image_with_the_agent_added_injects_at_its_first_boot(
        tmp_path: Path) -> None:
    """The test bed's stock DHCP image (no agent), as a qcow2, gets the agent with
    add-agent (stack detected), and boots with the config drive to the injected static
    config: the agent's result says installed, the guest's own report shows the
    address, routes and names the drive carries."""
    from netinject.vm.harness import BootSpec, boot, kvm_usable
    from netinject.vm.image import VariantImage
    from netinject.vm.progress import Progress
    from netinject.vm.scenarios import Prepared

    p = Prepared(("dhcp", "inject"), Progress())
    try:
        stock = p.images["dhcp"]
        raw = tmp_path / "stock.raw"
        copy_sparse(stock.image, raw)
        disk = _qcow2(raw, tmp_path / "stock.qcow2")
        raw.unlink()
        assert main(["image", "add-agent", str(disk)]) == 0
        booted = tmp_path / "booted.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(booted)],
                       check=True)
        accel = "kvm" if kvm_usable(stock) else "tcg"
        image = VariantImage("dhcp+add-agent", booted, stock.kernel, stock.initrd)
        res = boot(BootSpec(image, p.drives["inject"], False, accel))
        result = res.agent_result
        assert result is not None, res.agent_log
        assert result["outcome"] == "installed", result
        assert_test_bed_network(res)
    finally:
        p.close()
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_comma_in_the_qcow2_path_is_a_name_not_a_qemu_option(tmp_path: Path) -> None:
    """qemu-storage-daemon takes the path in its key=value syntax: a ',' in it must stay
    part of the name (written ',,'), never start an option (here: another driver)."""
    raw = tmp_path / "disk.raw"
    _ext4(raw, _tree(tmp_path))
    disk = _qcow2(raw, tmp_path / "disk,driver=null-co.qcow2")
    assert main(["image", "add-agent", str(disk), "--stack", "ifupdown"]) == 0
    _assert_installed(_fs_of(disk, tmp_path))
