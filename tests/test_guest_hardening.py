"""Guest agent hardening: where the drive came from, and how files are handled.

Each test here failed on main before its fix. The agent runs as in the guest (the guest
image's Python, -I -S) against guest-shaped trees with drives built by netinject.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers.guest import (
    BUNDLE,
    GUEST_PYTHON,
    GUEST_VERSION,
    ORIGINAL_ENI,
    agent_log,
    instance_doc,
    make_drive,
    make_guest,
    run_agent,
    snapshot,
)

UUID_A = "1e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0"
OTHER = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"


def _guest(tmp_path: Path) -> Path:
    doc = instance_doc()
    return make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))


def _steps_aside(root: Path, reason: str) -> None:
    before = snapshot(root)
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    log = agent_log(root)
    assert reason in log, log
    assert "stepping aside" in log
    assert snapshot(root) == before
    assert not (root / "var/lib/netinject/instance-id").exists()


# -- drive origin -----------------------------------------------------------------------


def test_writable_drive_is_not_trusted(tmp_path: Path) -> None:
    """A user-attached volume labelled config-2 is writable; nova's drive is not."""
    root = _guest(tmp_path)
    (root / "sys/class/block/vdb/ro").write_text("0\n")
    _steps_aside(root, "is writable")


def test_drive_without_ro_attribute_is_not_trusted(tmp_path: Path) -> None:
    root = _guest(tmp_path)
    (root / "sys/class/block/vdb/ro").unlink()
    _steps_aside(root, "cannot tell whether")


def test_drive_for_another_instance_is_not_trusted(tmp_path: Path) -> None:
    root = _guest(tmp_path)
    (root / "sys/class/dmi/id/product_uuid").write_text(OTHER + "\n")
    _steps_aside(root, f"this machine's system UUID is {OTHER}: not trusting it")


def test_missing_system_uuid_is_not_trusted(tmp_path: Path) -> None:
    root = _guest(tmp_path)
    (root / "sys/class/dmi/id/product_uuid").unlink()
    _steps_aside(root, "cannot read the system UUID")


def test_upper_case_system_uuid_matches(tmp_path: Path) -> None:
    root = _guest(tmp_path)
    (root / "sys/class/dmi/id/product_uuid").write_text(UUID_A.upper() + "\n")
    assert run_agent(root).returncode == 0
    assert "done: 3 file(s) installed" in agent_log(root)


@pytest.mark.parametrize("read_only", [True, False])
def test_real_block_device_is_checked_through_its_major_minor(read_only: bool,
                                                             tmp_path: Path) -> None:
    """For a block device the attribute is looked up by major:minor in the kernel's own
    /sys/dev/block/M:m/ro: a loop device made from the drive image, read-only or not.
    (The tree's sys/dev leads to the real /sys/dev; the DMI uuid is the tree's.)"""
    root = _guest(tmp_path)
    loop = subprocess.run(["losetup", "--find", "--show",
                           *(["--read-only"] if read_only else []),
                           str(tmp_path / "c.img")], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        (root / "sys/dev").symlink_to("/sys/dev")
        (root / "sys/class/block/vdb/ro").write_text("1\n")  # must not be what is read
        done = run_agent(root, "--drive", loop)
        assert done.returncode == 0, done.stderr
        log = agent_log(root)
        if read_only:
            assert "done: 3 file(s) installed" in log, log
        else:
            assert f"{loop} is writable" in log, log
            assert (root / "etc/network/interfaces").read_bytes() == ORIGINAL_ENI
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def test_fifo_instead_of_the_device_does_not_hang(tmp_path: Path) -> None:
    root = _guest(tmp_path)
    (root / "dev/vdb").unlink()
    os.mkfifo(root / "dev/vdb")
    (root / "dev/disk/by-label").mkdir(parents=True)
    os.symlink("../../vdb", root / "dev/disk/by-label/config-2")
    t0 = time.monotonic()
    done = run_agent(root)  # a blocking open would hang until the 60 s timeout
    assert done.returncode == 0
    assert time.monotonic() - t0 < 20
    assert "no config drive" in agent_log(root)


def test_fifo_at_the_state_file_does_not_hang(tmp_path: Path) -> None:
    root = _guest(tmp_path)
    (root / "var/lib/netinject").mkdir(parents=True)
    os.mkfifo(root / "var/lib/netinject/instance-id")
    done = run_agent(root)
    assert done.returncode == 0


# -- file handling ----------------------------------------------------------------------


def test_hard_link_at_the_staging_name_does_not_reach_the_outside_file(
        tmp_path: Path) -> None:
    root = _guest(tmp_path)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious\n")
    os.link(outside, root / "etc/network/.interfaces.netinject-tmp")
    assert run_agent(root).returncode == 0
    assert outside.read_bytes() == b"precious\n"
    assert "done: 3 file(s) installed" in agent_log(root)


def test_symlink_at_the_staging_name_is_left_alone(tmp_path: Path) -> None:
    """Not a file an earlier run left: the agent refuses, changes nothing, and does not
    delete the symlink in its rollback."""
    root = _guest(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x\n")
    link = root / "etc/network/.interfaces.netinject-tmp"
    os.symlink(target, link)
    before = snapshot(root)
    assert run_agent(root).returncode == 0
    assert os.readlink(link) == str(target)
    assert target.read_bytes() == b"x\n"
    assert "is in the way" in agent_log(root)
    after = snapshot(root)
    # Only the (empty) backup directory of the attempt may differ.
    assert {k: v for k, v in after.items() if "var/lib/netinject" not in k} == \
        {k: v for k, v in before.items() if "var/lib/netinject" not in k}
    assert (root / "etc/network/interfaces").read_bytes() == ORIGINAL_ENI


@pytest.mark.parametrize("rel", ["var/lib/netinject", "var/lib", "var/log"])
def test_state_backup_and_log_never_leave_the_root_through_a_symlink(
        rel: str, tmp_path: Path) -> None:
    root = _guest(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    path = root / rel
    if path.exists():
        path.rmdir()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(outside)
    assert run_agent(root).returncode == 0
    assert list(outside.rglob("*")) == []


def test_replaced_files_keep_their_mode_and_owner(tmp_path: Path) -> None:
    root = _guest(tmp_path)
    eni = root / "etc/network/interfaces"
    eni.chmod(0o600)
    os.chown(eni, 1234, 5678)
    assert run_agent(root).returncode == 0
    st = eni.stat()
    assert eni.read_bytes() != ORIGINAL_ENI
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    # A new file gets the manifest's mode and root's ownership.
    rules = (root / "etc/udev/rules.d/70-persistent-net.rules").stat()
    assert (rules.st_mode & 0o7777, rules.st_uid) == (0o644, 0)


def _launcher_says(*prefix: str) -> str:
    from netinject.guest import launcher

    code = (f"import sys; sys.path.insert(0, {str(Path(launcher.__file__).parent)!r}); "
            "import launcher; print(launcher.realtime_bounded())")
    return subprocess.run([*prefix, GUEST_PYTHON, "-I", "-S", "-c", code], check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


def test_launcher_asks_for_real_time_priority_only_when_bounded() -> None:
    """Without RLIMIT_RTTIME (sysvinit, or a unit without LimitRTTIME=) no real-time
    priority; with the unit's bound, yes."""
    assert _launcher_says() == "False"
    assert _launcher_says("prlimit", "--rttime=200000:400000") == "True"
    assert _launcher_says("prlimit", "--rttime=5000000:6000000") == "False"  # too loose


def test_the_bound_stops_a_looping_real_time_process() -> None:
    """What the bound buys: a loop at SCHED_FIFO 1 under the unit's LimitRTTIME is killed
    by the kernel (SIGXCPU at 200 ms of CPU without a blocking call), instead of holding
    a 1-vCPU guest's CPU until the unit's 30 s timeout."""
    import time

    t0 = time.monotonic()
    done = subprocess.run(["prlimit", "--rttime=200000:400000", "chrt", "--fifo", "1",
                           GUEST_PYTHON, "-I", "-S", "-c", "while True: pass"],
                          capture_output=True, check=False, timeout=30)
    assert done.returncode in (-24, -9, 128 + 24, 128 + 9), done  # SIGXCPU or SIGKILL
    assert time.monotonic() - t0 < 10


ASK_REALTIME = """
import posix
ns = {{"__name__": "netinject_launcher"}}
exec(compile(open({launcher!r}).read(), {launcher!r}, "exec"), ns)
ns["ask_realtime"]({agent_dir!r})
print(posix.sched_getscheduler(0) & ~posix.SCHED_RESET_ON_FORK == posix.SCHED_FIFO)
"""


def test_the_installed_launcher_takes_real_time_only_under_the_units_bound(
        tmp_path: Path) -> None:
    """The unit's LimitRTTIME= is a bound the installed launcher accepts: run under it
    (prlimit, as systemd sets it), the launcher takes SCHED_FIFO; without a bound, or
    under a looser one, it does not; nor when the agent is not compiled for this Python
    (compiling it would run past the bound: SIGXCPU, seen on Debian 13)."""
    root = tmp_path / "img"
    # An image with this Python (install precompiles the agent for it).
    (root / "usr/lib/python{}.{}".format(*GUEST_VERSION)).mkdir(parents=True)
    subprocess.run([GUEST_PYTHON, "-I", "-S", str(BUNDLE), "install", "--root", str(root),
                    "--stack", "ifupdown"], check=True, capture_output=True, timeout=60)
    unit = (root / "lib/systemd/system/netinject.service").read_text()
    soft, hard = (int(v.removesuffix("ms")) * 1000 for v in
                  unit.split("LimitRTTIME=")[1].split()[0].split(":"))
    agent_dir = root / "usr/lib/netinject"
    code = ASK_REALTIME.format(launcher=str(root / "usr/sbin/netinject-guest"),
                               agent_dir=str(agent_dir))

    def fifo(*prlimit: str) -> bool:
        done = subprocess.run([*prlimit, GUEST_PYTHON, "-I", "-S", "-c", code],
                              capture_output=True, text=True, check=True, timeout=60)
        return done.stdout.split() == ["True"]

    assert fifo("prlimit", f"--rttime={soft}:{hard}")
    assert not fifo()
    assert not fifo("prlimit", "--rttime=5000000:10000000")
    for pyc in (agent_dir / "__pycache__").iterdir():
        pyc.unlink()
    assert not fifo("prlimit", f"--rttime={soft}:{hard}")
