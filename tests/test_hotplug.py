"""Hot-plug flow pieces against a real qemu-ga on this host (its file system stands in
for the guest's)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from conftest import QgaAgent as Agent
from netinject.cli import main
from netinject.hotplug import HotplugError, attach, write_files_atomic
from netinject.model import Nic
from netinject.qga import GuestAgent, QgaError
from netinject.vm import instance as vm


def test_atomic_write_installs_every_file(qga: Agent, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"old a")
    with GuestAgent.unix(qga.sock) as ga:
        write_files_atomic(ga, {str(a): b"new a", str(b): b"new b"})
    assert a.read_bytes() == b"new a"
    assert b.read_bytes() == b"new b"
    assert stat.S_IMODE(b.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_failed_rename_restores_the_files_already_replaced(qga: Agent,
                                                           tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(b"old a")
    blocker = tmp_path / "b"
    blocker.mkdir()
    (blocker / "keep").write_text("x")  # mv cannot replace a non-empty directory
    with GuestAgent.unix(qga.sock) as ga, pytest.raises(QgaError):
        write_files_atomic(ga, {str(a): b"new a", str(blocker): b"new b"})
    assert a.read_bytes() == b"old a"
    assert (blocker / "keep").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir() if "netinject" in p.name] == []


class RecordingAttacher:
    """Stands in for QEMU/libvirt only to prove that nothing gets attached (the real QMP
    attach runs in the end-to-end hot-plug test)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def attach(self, nic: Nic, tap: str) -> None:
        self.calls.append(f"attach {nic.name}")

    def detach(self, nic: Nic) -> None:
        self.calls.append(f"detach {nic.name}")


def test_unreachable_agent_means_no_attach(tmp_path: Path) -> None:
    port, subnet, network = vm.hotplug_port()
    rec = RecordingAttacher()
    with GuestAgent.unix(tmp_path / "none.sock", timeout=1) as ga, \
            pytest.raises(HotplugError) as exc:
        attach(vm.document(), port, ga, rec, "tap1", [subnet], [network])
    assert "was not attached" in str(exc.value)
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


def test_cli_reports_unreachable_agent(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    port, subnet, network = vm.hotplug_port()
    files = {}
    for name, obj in (("doc", vm.document()), ("port", {"port": port}),
                      ("subnet", subnet), ("network", network)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(obj))
    rc = main(["hotplug", "attach", str(files["doc"]), "--port", str(files["port"]),
               "--subnet", str(files["subnet"]), "--network", str(files["network"]),
               "--qga", str(tmp_path / "none.sock"), "--qmp", str(tmp_path / "qmp.sock"),
               "--system-metadata-out", str(tmp_path / "sm.json")])
    assert rc == 1
    assert "no guest agent at" in capsys.readouterr().err
    assert not (tmp_path / "sm.json").exists()
