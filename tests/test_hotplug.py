"""Hot-plug against a real qemu-ga on this host: its file system stands in for the guest's
(a guest-shaped tree under tmp_path, the agent run with --root through guest-exec).

The fault matrix kills, stops or restarts the real qemu-ga right before each guest
command of an attach and checks that the guest's files are never a mix of old and new,
and that what the command says about them is true.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import FaultyTransport
from conftest import QgaAgent as Agent
from helpers.guest import AGENT, GUEST_PYTHON, RecordingAttacher, make_guest
from netinject.cli import main
from netinject.guest import contract
from netinject.hotplug import (
    ApplyOutcome,
    GuestSide,
    HotplugError,
    apply_in_guest,
    attach,
    bundle_for,
    kept_paths,
    with_port,
)
from netinject.model import Nic
from netinject.qga import GuestAgent, SocketTransport
from netinject.render import Options
from netinject.sources.neutron import parse_document
from netinject.vm import testbed as vm

FILES = ("etc/network/interfaces", "etc/udev/rules.d/70-persistent-net.rules",
         "etc/resolv.conf")


def _guest(tmp_path: Path) -> tuple[Path, GuestSide]:
    root = make_guest(tmp_path / "root", vm.document(), None)
    # A plain resolv.conf (as in the Debian guest images), so all three files take part.
    (root / "etc/resolv.conf").unlink()
    (root / "etc/resolv.conf").write_text("nameserver 192.0.2.99\n")
    side = GuestSide(command=(GUEST_PYTHON, "-I", "-S", str(AGENT)), root=str(root),
                     sysfs=str(root / "sys"), recovery_timeout=2.5)
    return root, side


def _new_files() -> dict[str, bytes]:
    port, subnet, network = vm.hotplug_port()
    instance = parse_document(with_port(vm.document(), port, [subnet], [network])).instance
    _, files = bundle_for(instance, Options())
    return {p: files[p] for p in FILES}  # (what an ifupdown guest installs)


def _state(root: Path, old: dict[str, bytes | None], new: dict[str, bytes]) -> str:
    now = _snapshot(root)
    if all(now[p] == new[p] for p in FILES):
        return "new"
    if all(now[p] == old[p] for p in FILES):
        return "old"
    return "mixed"


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {p: (root / p).read_bytes() if (root / p).is_file() else None for p in FILES}


def test_attach_installs_every_file_in_one_transaction(qga: Agent, tmp_path: Path) -> None:
    root, side = _guest(tmp_path)
    (root / "etc/network/interfaces").chmod(0o600)  # an admin's mode survives
    port, subnet, network = vm.hotplug_port()
    rec = RecordingAttacher()
    with GuestAgent.unix(qga.sock, timeout=5) as ga:
        res = attach(vm.document(), port, ga, rec, "tap1", [subnet], [network],
                     timeout=0.2, side=side)
    assert rec.calls == ["attach eth1"]
    assert res.applied is not None
    assert res.applied.outcome is ApplyOutcome.APPLIED
    new = _new_files()
    assert {p: (root / p).read_bytes() for p in FILES} == new
    assert (root / "etc/network/interfaces").stat().st_mode & 0o777 == 0o600
    assert (root / FILES[1]).stat().st_mode & 0o777 == 0o644
    # No staging, restore or backup leftovers; the outcome is recorded.
    leftovers = [p for p in root.rglob("*") if "netinject-tmp" in p.name
                 or "netinject-restore" in p.name]
    assert leftovers == []
    assert not (root / "var/lib/netinject/apply-backup").exists()
    said = contract.parse_result((root / "var/lib/netinject/apply-status").read_text())
    assert said is not None
    assert said["outcome"] == contract.Outcome.APPLIED


def test_apply_keeps_a_resolv_conf_symlink(qga: Agent, tmp_path: Path) -> None:
    root, side = _guest(tmp_path)
    (root / "etc/resolv.conf").unlink()
    os.symlink("../run/resolv.conf", root / "etc/resolv.conf")
    port, subnet, network = vm.hotplug_port()
    instance = parse_document(with_port(vm.document(), port, [subnet], [network])).instance
    with GuestAgent.unix(qga.sock, timeout=5) as ga:
        res = apply_in_guest(ga, instance, Options(), side)
    assert res.outcome is ApplyOutcome.APPLIED, res.detail
    assert os.readlink(root / "etc/resolv.conf") == "../run/resolv.conf"
    assert b"eth1" in (root / "etc/network/interfaces").read_bytes()


class RestartBeforeFirstStatusPoll(SocketTransport):
    """The real socket client; right before the apply's first guest-exec-status (the
    apply was sent) it waits until the guest recorded the apply's outcome, then restarts
    qemu-ga: the guest applied everything and the reply is lost, deterministically."""

    def __init__(self, qga: Agent, status: Path, timeout: float) -> None:
        super().__init__(qga.sock, timeout)
        self.qga = qga
        self.status = status
        self.sent: list[str] = []
        self.applying = False

    def command(self, execute: str, arguments: dict[str, Any] | None,
                timeout: float) -> Any:
        if execute == "guest-exec" and "apply" in (arguments or {}).get("arg", []):
            self.applying = True
        elif execute == "guest-exec-status" and self.applying:
            self.applying = False
            deadline = time.monotonic() + 30
            while not (self.status.is_file() and self.status.read_text().strip()):
                assert time.monotonic() < deadline, "the apply did not end"
                time.sleep(0.02)
            assert self.qga.proc is not None
            self.qga.proc.kill()
            self.qga.proc.wait()
            self.qga.start()
        self.sent.append(execute)
        return super().command(execute, arguments, timeout)


def test_a_lost_reply_with_a_kept_resolv_conf_symlink_is_applied_not_mixed(
        qga: Agent, tmp_path: Path) -> None:
    """The agent keeps a resolv.conf symlink (the image manages DNS). When the reply of
    an apply that installed everything is lost, the host learns the outcome from the guest
    and reads the files back: the kept symlink is not a file that failed to change, so the
    outcome is APPLIED and the NIC is attached (it used to say PARTLY updated)."""
    root, side = _guest(tmp_path)
    (root / "etc/resolv.conf").unlink()
    os.symlink("../run/resolv.conf", root / "etc/resolv.conf")
    assert (root / "run/resolv.conf").read_text() == "nameserver 127.0.0.53\n"
    port, subnet, network = vm.hotplug_port()
    new = _new_files()
    rec = RecordingAttacher()
    t = RestartBeforeFirstStatusPoll(qga, root / "var/lib/netinject/apply-status", 5.0)
    with GuestAgent(t, 5.0) as ga:
        res = attach(vm.document(), port, ga, rec, "tap1", [subnet], [network],
                     timeout=0.01, side=side)
    assert "guest-exec-status" in t.sent  # the fault happened: the reply was lost
    assert t.sent.count("guest-exec") == 3  # --version, the apply, then apply-status
    assert res.applied is not None
    assert res.applied.outcome is ApplyOutcome.APPLIED, res.applied.detail
    assert "reply lost" in res.applied.detail
    assert res.applied.guest == "applied"  # the guest's word, typed
    assert rec.calls == ["attach eth1"]
    # What the guest has: the new files, and the symlink kept (its target untouched).
    assert os.readlink(root / "etc/resolv.conf") == "../run/resolv.conf"
    assert (root / "run/resolv.conf").read_text() == "nameserver 127.0.0.53\n"
    for p in FILES[:2]:
        assert (root / p).read_bytes() == new[p]


def test_only_paths_the_agent_may_keep_are_left_out_of_the_readback() -> None:
    """An answer claiming it kept a file the agent always replaces does not make the
    host skip that file; only an applied answer keeps anything."""
    said = contract.parse_result(
        "netinject-result outcome=applied txid=t1 kept=etc/resolv.conf,etc/network/interfaces")
    assert said is not None
    assert kept_paths(said) == {"etc/resolv.conf"}
    assert kept_paths({"outcome": "rolled-back", "kept": "etc/resolv.conf"}) == set()


def test_failed_install_rolls_back_every_file(qga: Agent, tmp_path: Path) -> None:
    """The udev rules target is a directory: the preflight refuses before anything is
    replaced, and the command says the files are unchanged (and they are)."""
    root, side = _guest(tmp_path)
    (root / FILES[1]).mkdir(parents=True)
    (root / FILES[1] / "keep").write_text("x")
    before = _snapshot(root)
    port, subnet, network = vm.hotplug_port()
    rec = RecordingAttacher()
    with GuestAgent.unix(qga.sock, timeout=5) as ga, pytest.raises(HotplugError) as exc:
        attach(vm.document(), port, ga, rec, "tap1", [subnet], [network], side=side)
    assert "was not attached: the guest's files are unchanged" in str(exc.value)
    assert "is not a regular file" in str(exc.value)
    assert rec.calls == []
    assert _snapshot(root) == before


def test_guest_without_the_agent_says_so_at_once(qga: Agent, tmp_path: Path) -> None:
    """An image without netinject-guest: qemu-ga refuses to start it, so nothing ran; the
    error says so right away (no wait for a reply that will never come)."""
    import dataclasses
    import time

    root, side = _guest(tmp_path)
    side = dataclasses.replace(side, command=(str(tmp_path / "no-such-agent"),))
    before = _snapshot(root)
    port, subnet, network = vm.hotplug_port()
    rec = RecordingAttacher()
    t0 = time.monotonic()
    with GuestAgent.unix(qga.sock, timeout=5) as ga, pytest.raises(HotplugError) as exc:
        attach(vm.document(), port, ga, rec, "tap1", [subnet], [network], side=side)
    assert time.monotonic() - t0 < side.recovery_timeout
    assert "the guest's files are unchanged" in str(exc.value)
    assert "is the netinject agent installed in the image?" in str(exc.value)
    assert rec.calls == []
    assert _snapshot(root) == before


def test_bundle_for_another_instance_is_refused(qga: Agent, tmp_path: Path) -> None:
    root, side = _guest(tmp_path)
    (root / "sys/class/dmi/id/product_uuid").write_text(
        "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6\n")
    before = _snapshot(root)
    instance = parse_document(vm.document()).instance
    with GuestAgent.unix(qga.sock, timeout=5) as ga:
        res = apply_in_guest(ga, instance, Options(), side)
    assert res.outcome is ApplyOutcome.UNCHANGED
    assert "not this machine" in res.detail
    assert _snapshot(root) == before


def test_unreachable_agent_means_no_attach(tmp_path: Path) -> None:
    port, subnet, network = vm.hotplug_port()
    rec = RecordingAttacher()
    with GuestAgent.unix(tmp_path / "none.sock", timeout=1) as ga, \
            pytest.raises(HotplugError) as exc:
        attach(vm.document(), port, ga, rec, "tap1", [subnet], [network])
    assert "was not attached: the guest's files are unchanged" in str(exc.value)
    assert rec.calls == []


def test_unreachable_agent_with_dhcp_fallback_attaches(tmp_path: Path) -> None:
    port, subnet, network = vm.hotplug_port()
    rec = RecordingAttacher()
    with GuestAgent.unix(tmp_path / "none.sock", timeout=1) as ga:
        res = attach(vm.document(), port, ga, rec, "tap1", [subnet], [network],
                     allow_dhcp_fallback=True)
    assert rec.calls == ["attach eth1"]
    assert not res.configured
    assert json.loads(res.system_metadata["ports_pattern"]) == {
        vm.PORT_ID: "0", vm.HOTPLUG_PORT_ID: "1"}


def _cli_files(tmp_path: Path) -> dict[str, Path]:
    port, subnet, network = vm.hotplug_port()
    files = {}
    for name, obj in (("doc", vm.document()), ("port", {"port": port}),
                      ("subnet", subnet), ("network", network)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(obj))
    return files


def _attach_cli(tmp_path: Path, files: dict[str, Path], *extra: str) -> int:
    """netinject hotplug attach with no agent at --qga (nothing listens there)."""
    return main(["hotplug", "attach", str(files["doc"]), "--port", str(files["port"]),
                 "--subnet", str(files["subnet"]), "--network", str(files["network"]),
                 "--qga", str(tmp_path / "none.sock"), "--qmp", str(tmp_path / "qmp.sock"),
                 *extra])


def test_cli_reports_unreachable_agent(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    files = _cli_files(tmp_path)
    rc = _attach_cli(tmp_path, files, "--system-metadata-out", str(tmp_path / "sm.json"))
    assert rc == 1
    assert "no guest agent at" in capsys.readouterr().err
    assert not (tmp_path / "sm.json").exists()


def test_cli_dhcp_fallback_that_attached_exits_0_with_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With --allow-dhcp-fallback the NIC is attached although the agent is unreachable:
    what was asked happened, so exit 0 with a warning (QMP is stood in for by the
    recording attacher: no QEMU runs here)."""
    import netinject.hotplug as hp

    rec = RecordingAttacher()
    monkeypatch.setattr(hp, "QmpAttacher", lambda _path: rec)
    files = _cli_files(tmp_path)
    rc = _attach_cli(tmp_path, files, "--allow-dhcp-fallback", "--system-metadata-out",
                     str(tmp_path / "sm.json"))
    assert rc == 0
    err = capsys.readouterr().err
    assert "warning: eth1 attached WITHOUT injected config" in err
    assert "the guest's files are unchanged" in err
    assert rec.calls == ["attach eth1"]
    assert (tmp_path / "sm.json").exists()


def test_cli_system_metadata_out_is_checked_before_the_guest_is_touched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _cli_files(tmp_path)
    (tmp_path / "sm").mkdir()
    rc = _attach_cli(tmp_path, files, "--system-metadata-out", str(tmp_path / "sm"))
    assert rc == 2
    assert "--system-metadata-out" in capsys.readouterr().err


# -- the fault matrix ----------------------------------------------------------------------


def _faults(qga: Agent) -> dict[str, Callable[[], None]]:
    def kill() -> None:
        assert qga.proc is not None
        qga.proc.kill()
        qga.proc.wait()

    def stop() -> None:
        assert qga.proc is not None
        proc = qga.proc
        proc.send_signal(signal.SIGSTOP)
        threading.Timer(1.5, lambda: proc.send_signal(signal.SIGCONT)).start()

    def restart() -> None:
        kill()
        qga.start()

    return {"kill": kill, "stop": stop, "restart": restart}


def _quiesce(root: Path, stopped: bool, timeout: float = 20.0) -> None:
    """Wait until no apply for this root runs (a killed qemu-ga's child goes on)."""
    deadline = time.monotonic() + timeout
    if stopped:
        time.sleep(2.0)  # a stopped agent is resumed after 1.5 s and runs what it had
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", f"--root {root}"], capture_output=True,
                               check=False).stdout
        if not found:
            return
        time.sleep(0.1)
    raise AssertionError("an apply kept running")


def _clean_run_commands(tmp_path: Path) -> list[str]:
    agent = Agent(tmp_path)
    agent.start()
    try:
        _, side = _guest(tmp_path)
        t = FaultyTransport(agent.sock, 5, -1, lambda: None)
        port, subnet, network = vm.hotplug_port()
        with GuestAgent(t, 5) as ga:
            attach(vm.document(), port, ga, RecordingAttacher(), "tap1", [subnet], [network],
                   timeout=0.01, side=side)
        # Up to the apply's last exec-status: after that only the address is polled.
        last = max(i for i, c in enumerate(t.sent) if c == "guest-exec-status")
        return t.sent[:last + 1]
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return _clean_run_commands(tmp_path_factory.mktemp("clean"))


@pytest.mark.e2e  # ~1 min: 39 runs against a real qemu-ga, faults with real timeouts
@pytest.mark.parametrize("fault", ["kill", "stop", "restart"])
def test_fault_before_each_guest_command_never_leaves_mixed_files_or_false_words(
        fault: str, clean_run: list[str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """For every guest command of a clean attach (ping, reading the originals, the
    apply's guest-exec and its status polls), a fresh guest tree and a fresh qemu-ga get
    the fault right before that command. Then: the files are all old or all new; a
    success means all new and the NIC attached; an error that says "unchanged" means all
    old, and nothing attached; "UNKNOWN" is allowed only when the agent could not be
    asked afterwards."""
    port, subnet, network = vm.hotplug_port()
    new = _new_files()
    outcomes: collections.Counter[str] = collections.Counter()
    for at, command in enumerate(clean_run):
        case = tmp_path / f"{at}"
        case.mkdir()
        agent = Agent(case)
        agent.start()
        try:
            root, side = _guest(case)
            old = _snapshot(root)
            rec = RecordingAttacher()
            t = FaultyTransport(agent.sock, 1.0, at, _faults(agent)[fault])
            message = ""
            try:
                with GuestAgent(t, 1.0) as ga:
                    attach(vm.document(), port, ga, rec, "tap1", [subnet], [network],
                           timeout=0.01, side=side)
                said = "applied"
            except HotplugError as exc:
                message = str(exc)
                said = ("unchanged" if "files are unchanged" in message else
                        "unknown" if "UNKNOWN" in message else
                        "mixed" if "PARTLY" in message else "other")
            _quiesce(root, fault == "stop")
            state = _state(root, old, new)
        finally:
            agent.stop()
        where = f"{fault} before #{at} {command}: said {said}, files {state}: {message}"
        assert state != "mixed", where
        assert said != "other", where
        if said == "applied":
            assert state == "new", where
            assert rec.calls == ["attach eth1"], where
        else:
            assert rec.calls == [], where
        if said == "unchanged":
            assert state == "old", where
        outcomes[f"said {said}, files {state}"] += 1
    with capsys.disabled():
        print(f"\nhot-plug fault matrix, {fault} before each of {len(clean_run)} guest "
              f"commands: {dict(sorted(outcomes.items()))}; mixed states 0, false "
              "messages 0")


def test_apply_status_fences_off_a_transaction_that_has_not_run(tmp_path: Path) -> None:
    """The host asks first; an apply of the same transaction arriving later (a stopped
    agent resumed) then changes nothing."""
    root, _ = _guest(tmp_path)
    port, subnet, network = vm.hotplug_port()
    instance = parse_document(with_port(vm.document(), port, [subnet], [network])).instance
    raw, _ = bundle_for(instance, Options())
    before = _snapshot(root)
    base = [GUEST_PYTHON, "-I", "-S", str(AGENT)]
    extra = ["--txid", "t1", "--root", str(root), "--sysfs", str(root / "sys")]
    status = subprocess.run([*base, "apply-status", *extra], capture_output=True, text=True,
                            check=False, timeout=60)
    assert status.returncode == 1
    assert _said(status.stdout)["outcome"] == contract.Outcome.FENCED
    late = subprocess.run([*base, "apply", *extra], input=raw, capture_output=True,
                          check=False, timeout=60)
    assert late.returncode == 1
    assert _said(late.stdout.decode())["outcome"] == contract.Outcome.FENCED
    assert _snapshot(root) == before
    # A new transaction goes through.
    done = subprocess.run([*base, "apply", *extra[:1], "t2", *extra[2:]], input=raw,
                          capture_output=True, check=False, timeout=60)
    assert done.returncode == 0, done.stdout
    assert _snapshot(root) != before


def test_interrupted_apply_is_rolled_back_by_the_next_one(tmp_path: Path) -> None:
    """An apply killed between its renames leaves its backup: the next apply (or
    apply-status) restores every file first, so no mix survives."""
    root, _ = _guest(tmp_path)
    before = _snapshot(root)
    base = [GUEST_PYTHON, "-I", "-S", str(AGENT)]
    extra = ["--root", str(root), "--sysfs", str(root / "sys")]
    port, subnet, network = vm.hotplug_port()
    instance = parse_document(with_port(vm.document(), port, [subnet], [network])).instance
    raw, _ = bundle_for(instance, Options())
    # Simulate the interruption: run the install by hand and stop after the first rename.
    # (The agent's os, with the first rename of a staged file ending the process.)
    code = (f"import os, sys; sys.path.insert(0, {str(AGENT.parent)!r}); "
            "import netinject_guest as a\n"
            "class Stop(BaseException): pass\n"
            "class Os:\n"
            "    def __getattr__(self, name): return getattr(os, name)\n"
            "    def rename(self, src, dst):\n"
            "        os.rename(src, dst)\n"
            "        if src.endswith('.netinject-tmp'): raise Stop\n"
            "a.os = Os()\n"
            "m = a.verify(a.parse_bundle(sys.stdin.buffer.read())).for_stack(a.IFUPDOWN)\n"
            f"try: a.install({str(root)!r}, m, a.Log({str(root)!r}, True), "
            f"a.join({str(root)!r}, a.APPLY_BACKUP), txid='t8')\n"
            "except Stop: pass\n")
    subprocess.run([GUEST_PYTHON, "-I", "-S", "-c", code], input=raw, check=True, timeout=60)
    assert _snapshot(root) != before  # one file replaced, the others not: a mix
    status = subprocess.run([*base, "apply-status", "--txid", "t9", *extra],
                            capture_output=True, text=True, check=False, timeout=60)
    assert status.returncode == 1
    assert _snapshot(root) == before
    assert "rolled back an interrupted apply" in (root / "var/log/netinject.log").read_text()
    # The interrupted transaction's outcome is recorded: asked, the guest tells the truth.
    late = subprocess.run([*base, "apply-status", "--txid", "t8", *extra],
                          capture_output=True, text=True, check=False, timeout=60)
    assert late.returncode == 1
    assert _said(late.stdout) == {
        "outcome": contract.Outcome.ROLLED_BACK, "txid": "t8",
        "message": "interrupted, then rolled back by a later transaction"}


# -- issue 20: the apply backup ------------------------------------------------------------

RULES = "etc/udev/rules.d/70-persistent-net.rules"


def _agent(root: Path, cmd: str, txid: str, raw: bytes = b""
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GUEST_PYTHON, "-I", "-S", str(AGENT), cmd, "--txid", txid,
                           "--root", str(root), "--sysfs", str(root / "sys")],
                          input=raw.decode("latin-1"), capture_output=True, text=True,
                          check=False, timeout=60)


def _said(stdout: str) -> dict[str, str]:
    """The agent's typed answer: its result line (contract.parse_result)."""
    said = contract.parse_result(stdout)
    assert said is not None, stdout
    return said


def _backup_of(root: Path, entries: dict[str, str | None]) -> Path:
    """An apply backup as an earlier transaction left it: {entry name: file text, or
    None for an empty entry (an .absent or .txid- mark)}."""
    backup = root / "var/lib/netinject/apply-backup"
    backup.mkdir(parents=True)
    for name, text in entries.items():
        (backup / name).write_text(text or "")
    return backup


def test_a_symlinked_apply_backup_is_refused(tmp_path: Path) -> None:
    """A5: recovery restored files from wherever var/lib/netinject/apply-backup pointed
    (and then deleted there). Refused now: nothing restored, nothing deleted."""
    from helpers.fuzz_image import tree_state

    root, _ = _guest(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "etc%network%interfaces").write_text("iface eth0 inet manual # planted\n")
    (outside / ".txid-t0").write_text("")
    (root / "var/lib/netinject").mkdir(parents=True)
    (root / "var/lib/netinject/apply-backup").symlink_to(outside)
    before, outside_before = _snapshot(root), tree_state(outside)
    for cmd, txid in (("apply-status", "t1"), ("apply", "t2")):
        done = _agent(root, cmd, txid, b"not a bundle")
        assert done.returncode == 1, done  # refused: nothing changed
        assert _said(done.stdout) == {
            "outcome": contract.Outcome.UNCHANGED, "txid": txid,
            "message": f"refused: refusing to write through symlinked directory "
                       f"{root}/var/lib/netinject/apply-backup"}
    assert _snapshot(root) == before
    assert tree_state(outside) == outside_before


def test_a_failed_apply_leaves_no_backup_for_the_next_one_to_restore(tmp_path: Path) -> None:
    """H2: an apply that failed on a full disk (staging: ENOSPC, and recording its
    outcome too) left its backup behind, and the next transaction quietly restored those
    originals over what had changed since. The failed apply now drops its backup once
    it has rolled back."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True,
                   timeout=30)
    try:
        root = make_guest(mnt / "root", vm.document(), None)
        (root / "etc/resolv.conf").unlink()
        (root / "etc/resolv.conf").write_text("nameserver 192.0.2.99\n")
        (root / "var/lib/netinject").mkdir()
        port, subnet, network = vm.hotplug_port()
        instance = parse_document(with_port(vm.document(), port, [subnet],
                                            [network])).instance
        raw, _ = bundle_for(instance, Options())
        before = _snapshot(root)
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        for size in (65536, 4096, 1):  # every last byte of the tmpfs
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
        os.close(fd)
        done = _agent(root, "apply", "t1", raw)
        assert done.returncode == 1, done  # APPLY_UNCHANGED, and true
        said = _said(done.stdout)
        assert said["outcome"] in (contract.Outcome.ROLLED_BACK, contract.Outcome.UNCHANGED)
        assert "No space left on device" in said["message"], done.stdout
        assert _snapshot(root) == before
        assert not (root / "var/lib/netinject/apply-backup").exists()
        # Room again; the guest's files change (an admin, a package) before the next
        # transaction, which must not put the originals of t1's time back.
        (mnt / "filler").unlink()
        (root / RULES).write_text("# the admin's rule\n")
        (root / "etc/network/interfaces.new").write_text("# the admin's config\n")
        (root / "etc/network/interfaces.new").rename(root / "etc/network/interfaces")
        changed = _snapshot(root)
        done = _agent(root, "apply", "t2", b"not a bundle")
        assert done.returncode == 1
        assert _said(done.stdout) == {"outcome": contract.Outcome.UNCHANGED, "txid": "t2",
                                      "message": "not a netinject bundle"}
        assert _snapshot(root) == changed
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def test_the_backup_of_a_transaction_that_ended_is_dropped_not_restored(
        tmp_path: Path) -> None:
    """H2: a backup whose transaction ended (here: applied, and the backup's removal
    was cut short) holds stale originals: dropped, saying so, nothing restored."""
    root, _ = _guest(tmp_path)
    (root / RULES).write_text("# installed by t1\n")
    backup = _backup_of(root, {".txid-t1": None, RULES.replace("/", "%") + ".absent": None})
    (root / "var/lib/netinject/apply-status").write_text(
        "netinject-result outcome=applied txid=t1 -- 1 file(s) installed\n")
    before = _snapshot(root)
    done = _agent(root, "apply-status", "t2")
    assert done.returncode == 1
    assert _said(done.stdout)["outcome"] == contract.Outcome.FENCED
    assert _snapshot(root) == before
    assert not backup.exists()
    assert "dropped the backup of transaction t1, which ended (applied): nothing restored" \
        in (root / "var/log/netinject.log").read_text()


def test_a_backup_that_names_no_transaction_is_refused(tmp_path: Path) -> None:
    """H2: a backup that does not say whose it is (an older agent's, or stale) is not
    restored blindly: the agent refuses every new transaction, changing nothing, and
    says why."""
    root, _ = _guest(tmp_path)
    (root / RULES).write_text("# the admin's rule\n")
    backup = _backup_of(root, {RULES.replace("/", "%") + ".absent": None})
    before = _snapshot(root)
    done = _agent(root, "apply-status", "t2")
    assert done.returncode == 1, done
    said = _said(done.stdout)
    assert said["outcome"] == contract.Outcome.UNCHANGED
    assert "holds a backup that names no transaction: not restoring it blindly" \
        in said["message"]
    assert _snapshot(root) == before
    assert backup.exists()


def test_an_applied_transaction_that_cannot_be_recorded_is_rolled_back_at_once(
        tmp_path: Path) -> None:
    """H2: files installed but the outcome not recorded would leave the backup for the
    next transaction to roll back behind the host's back: rolled back now, and said."""
    root, _ = _guest(tmp_path)
    (root / "var/lib/netinject/.apply-status.netinject-tmp").mkdir(parents=True)
    port, subnet, network = vm.hotplug_port()
    instance = parse_document(with_port(vm.document(), port, [subnet], [network])).instance
    raw, _ = bundle_for(instance, Options())
    before = _snapshot(root)
    done = _agent(root, "apply", "t1", raw)
    assert done.returncode == 1, done
    said = _said(done.stdout)
    assert said["outcome"] == contract.Outcome.ROLLED_BACK
    assert said["message"].startswith("could not record the outcome (")
    assert _snapshot(root) == before
    assert not (root / "var/lib/netinject/apply-backup").exists()


# -- issue 21: typed outcomes --------------------------------------------------------------

FAULTY = """
import os, sys
sys.path.insert(0, {agent_dir!r})
import netinject_guest as a
class Faulty:
    # The agent's os, where only the first {allowed} rename(s) of a staged file
    # succeed and no file can be put back (every restore fails): a rollback that fails,
    # every time it is tried.
    renames = 0
    def __getattr__(self, name):
        return getattr(os, name)
    def rename(self, src, dst):
        if src.endswith(".netinject-restore"):
            raise OSError(5, "Input/output error (injected)")
        if src.endswith(".netinject-tmp"):
            Faulty.renames += 1
            if Faulty.renames > {allowed}:
                raise OSError(28, "No space left on device (injected)")
        os.rename(src, dst)
a.os = Faulty()
sys.exit(a.main(sys.argv[1:]))
"""


def test_a_rollback_that_fails_reads_broken_through_apply_and_apply_status(
        tmp_path: Path) -> None:
    """A rollback that fails leaves the files neither all old nor all new: ``apply``
    says broken, and so does ``apply-status`` for the same transaction (it used to say
    unchanged: the status was decided by searching the error's text). Both answer with
    the typed outcome in their result line, and exit 3."""
    root, _ = _guest(tmp_path)
    port, subnet, network = vm.hotplug_port()
    instance = parse_document(with_port(vm.document(), port, [subnet], [network])).instance
    raw, _ = bundle_for(instance, Options())
    where = ["--txid", "t1", "--root", str(root), "--sysfs", str(root / "sys")]
    applied = subprocess.run([GUEST_PYTHON, "-I", "-S", "-c", FAULTY.format(
        agent_dir=str(AGENT.parent), allowed=1), "apply", *where], input=raw,
        capture_output=True, check=False, timeout=60)
    status = subprocess.run([GUEST_PYTHON, "-I", "-S", "-c", FAULTY.format(
        agent_dir=str(AGENT.parent), allowed=0), "apply-status", *where],
        capture_output=True, check=False, timeout=60)
    for done in (applied, status):
        said = _said(done.stdout.decode())
        assert (done.returncode, said["outcome"], said["txid"]) == (
            3, contract.Outcome.BROKEN, "t1"), done
    assert "rollback FAILED" in _said(applied.stdout.decode())["message"]
    # The guest's files are a mix indeed: the first file is new, the others are not.
    new, now = _new_files(), _snapshot(root)
    assert [now[p] == new[p] for p in FILES] == [True, False, False]


# -- issue 22: the agent's version; a NIC that cannot be attached ---------------------------


def _booted(tmp_path: Path) -> tuple[Path, GuestSide]:
    """A guest tree after its first boot (the agent installed the test bed's config
    from a real drive and recorded the applied manifest), and how to reach its agent."""
    from helpers.guest import make_drive, run_agent

    drive = make_drive(tmp_path / "drive.img", vm.document())
    root = make_guest(tmp_path / "root", vm.document(), drive)
    done = run_agent(root)
    assert "outcome=installed" in done.stderr, done.stderr
    side = GuestSide(command=(GUEST_PYTHON, "-I", "-S", str(AGENT)), root=str(root),
                     sysfs=str(root / "sys"), recovery_timeout=2.5)
    return root, side


class FailingAttacher(RecordingAttacher):
    """Stands in for QEMU refusing the NIC (device_add failing): records the call and
    raises as QmpAttacher does. ``then``: runs first (a fault in the guest meanwhile)."""

    def __init__(self, then: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.then = then

    def attach(self, nic: Nic, tap: str) -> None:
        super().attach(nic, tap)
        self.then()
        raise HotplugError(f"QMP attach of {nic.name} failed: Duplicate ID (stand-in)")


def _guest_files(root: Path) -> dict[str, Any]:
    """The guest's config: every file under etc/ exactly, and the NICs' facts in the
    manifest its agent last applied."""
    from helpers.guest import snapshot

    applied = root / "var/lib/netinject/applied-manifest"
    facts = contract.parse_manifest(applied.read_bytes()).facts if applied.exists() else None
    return {**{k: v for k, v in snapshot(root).items() if k.startswith("etc/")},
            "facts": {n: f.records() for n, f in (facts or {}).items()}}


def test_a_nic_that_cannot_be_attached_leaves_the_guest_all_old(
        qga: Agent, tmp_path: Path) -> None:
    """Issue 22, item 4: the guest took eth1's config, then QEMU refused the NIC. The old
    config is applied again (one more transaction), so the guest ends all old, and the
    error says so with its result (it used to raise without one, which read
    'unchanged' while the files were new)."""
    root, side = _booted(tmp_path)
    before = _guest_files(root)
    port, subnet, network = vm.hotplug_port()
    rec = FailingAttacher()
    with GuestAgent.unix(qga.sock, timeout=5) as ga, pytest.raises(HotplugError) as exc:
        attach(vm.document(), port, ga, rec, "tap1", [subnet], [network], side=side)
    assert rec.calls == ["attach eth1"]
    assert exc.value.result is not None
    assert exc.value.outcome is ApplyOutcome.UNCHANGED
    assert exc.value.result.guest == contract.Outcome.APPLIED  # (the undo's own word)
    assert str(exc.value).startswith("QMP attach of eth1 failed: Duplicate ID (stand-in); "
                                     "the guest's files are as before (eth1's config was "
                                     "installed, then undone)"), str(exc.value)
    assert _guest_files(root) == before
    # Two transactions: eth1 added, then removed again.
    ends = [contract.parse_result(line) for line in
            (root / "var/lib/netinject/apply-status").read_text().splitlines()]
    assert [(e or {}).get("added") for e in ends] == ["eth1", None]
    assert [(e or {}).get("removed") for e in ends] == [None, "eth1"]


def test_when_undoing_fails_the_error_says_the_files_are_new(
        qga: Agent, tmp_path: Path) -> None:
    """The NIC fails to attach and the undo is refused too (here: meanwhile the guest's
    SMBIOS uuid no longer matches the instance, so the agent refuses the old config's
    bundle). The error says plainly that the files are NEW, and its result says
    APPLIED."""
    root, side = _booted(tmp_path)
    port, subnet, network = vm.hotplug_port()

    def other_machine() -> None:
        (root / "sys/class/dmi/id/product_uuid").write_text(
            "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6\n")

    rec = FailingAttacher(other_machine)
    with GuestAgent.unix(qga.sock, timeout=5) as ga, pytest.raises(HotplugError) as exc:
        attach(vm.document(), port, ga, rec, "tap1", [subnet], [network], side=side)
    assert exc.value.outcome is ApplyOutcome.APPLIED
    assert "undoing eth1's config in the guest FAILED: the guest's files are NEW: they " \
           "configure eth1, which is not attached" in str(exc.value)
    assert "not this machine" in str(exc.value)
    new = _new_files()
    for p in FILES[:2]:
        assert (root / p).read_bytes() == new[p]


def test_a_detach_that_fails_at_qemu_says_nothing_changed_in_the_guest(
        qga: Agent, tmp_path: Path) -> None:
    root, side = _booted(tmp_path)
    before = _guest_files(root)

    class NoDetach(RecordingAttacher):
        def detach(self, nic: Nic) -> None:
            raise HotplugError(f"QMP detach of {nic.name} failed: no device (stand-in)")

    from netinject.hotplug import detach

    with GuestAgent.unix(qga.sock, timeout=5) as ga, pytest.raises(HotplugError) as exc:
        detach(vm.document(), vm.PORT_ID, ga, NoDetach(), side=side)
    assert exc.value.result is not None
    assert exc.value.outcome is ApplyOutcome.UNCHANGED
    assert str(exc.value).endswith("nothing was changed in the guest")
    assert _guest_files(root) == before


def _fake_agent(tmp_path: Path, version_reply: str, status: int = 0) -> tuple[Path, Path]:
    """A STAND-IN for an older agent in the image: answers --version as told and
    records any other call (it must never get one)."""
    calls = tmp_path / "calls"
    script = tmp_path / "old-agent"
    script.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then printf '%s\\n' "
                      f"'{version_reply}'; exit {status}; fi\necho \"$@\" >> {calls}\n"
                      "exit 1\n")
    script.chmod(0o755)
    return script, calls


@pytest.mark.parametrize(("reply", "status", "words"), [
    ("netinject-guest 0.1.0", 0, "the guest's netinject agent is 0.1.0; live changes need "
                                 "0.2.0 or newer"),
    ("usage: netinject-guest [-h] {run,apply}", 2, "does not say its version"),
])
def test_an_agent_too_old_is_refused_before_anything_changes(
        qga: Agent, tmp_path: Path, reply: str, status: int, words: str) -> None:
    root, side = _booted(tmp_path)
    script, calls = _fake_agent(tmp_path, reply, status)
    side = GuestSide(command=(str(script),), root=side.root, sysfs=side.sysfs)
    before = _guest_files(root)
    port, subnet, network = vm.hotplug_port()
    rec = RecordingAttacher()
    with GuestAgent.unix(qga.sock, timeout=5) as ga, pytest.raises(HotplugError) as exc:
        attach(vm.document(), port, ga, rec, "tap1", [subnet], [network], side=side)
    assert words in str(exc.value)
    assert f"this netinject ships {contract.VERSION}" in str(exc.value)
    assert "eth1 was not attached: the guest's files are unchanged" in str(exc.value)
    assert exc.value.outcome is ApplyOutcome.UNCHANGED
    assert rec.calls == []
    assert not calls.exists()  # no apply was sent
    assert _guest_files(root) == before


def test_agent_versions_are_read_as_numbers() -> None:
    from netinject.hotplug import LIVE_AGENT, parse_version

    assert parse_version("netinject-guest 0.2.0") == (0, 2, 0)
    assert parse_version("netinject-guest 0.10.1") == (0, 10, 1)
    newer, older = (parse_version(f"netinject-guest {v}") for v in ("0.10.1", "0.1.9"))
    assert newer is not None
    assert older is not None
    assert newer > LIVE_AGENT > older  # (numbers, not text: 0.10 is newer than 0.2)
    for text in ("", "netinject-guest", "netinject-guest 0.2.0rc1", "qemu-ga 0.2.0",
                 "netinject-guest 0.2.0 extra", "netinject-guest ٠.٢.٠"):
        assert parse_version(text) is None, text


def test_the_host_waits_for_an_apply_longer_than_one_agent_call(
        qga: Agent, tmp_path: Path) -> None:
    """An apply may wait 10 s for the agent's lock, then bring NICs up and check them:
    longer than one guest-agent call may take. The real agent, slowed by 1.5 s before
    an apply (a wrapper), with calls timing out after 1 s: the host waits for it
    (GuestSide.apply_timeout), it does not take it for a lost reply."""
    _root, side = _booted(tmp_path)
    slow = tmp_path / "slow-agent"
    slow.write_text(f"#!/bin/sh\n[ \"$1\" = apply ] && sleep 1.5\nexec {GUEST_PYTHON} -I -S "
                    f"{AGENT} \"$@\"\n")
    slow.chmod(0o755)
    side = GuestSide(command=(str(slow),), root=side.root, sysfs=side.sysfs,
                     recovery_timeout=0.5, apply_timeout=10)
    port, subnet, network = vm.hotplug_port()
    instance = parse_document(with_port(vm.document(), port, [subnet], [network])).instance
    with GuestAgent.unix(qga.sock, timeout=1) as ga:
        res = apply_in_guest(ga, instance, Options(), side)
    assert res.outcome is ApplyOutcome.APPLIED, res.detail
    assert "reply lost" not in res.detail
    assert res.said.get("added") == "eth1"
