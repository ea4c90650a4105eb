"""Shared test helpers: exact file-set comparisons and running the real CLI."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netinject.qga import SocketTransport

CASES = Path(__file__).parent / "cases"
FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root, by relative path, with its exact bytes."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def load_case(name: str) -> Any:
    return json.loads((CASES / name / "instance.json").read_text())


def ifup_no_act(interfaces: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    """Parse an ENI file with the real ifupdown: ``ifup --no-act -i FILE -a``.

    ifupdown prints the commands it would run on stderr; both streams land in stdout.
    """
    ifup = shutil.which("ifup") or "/sbin/ifup"
    return subprocess.run(
        [ifup, "--no-act", "-i", str(interfaces), "-a", "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30, check=False)


@pytest.fixture
def write_json(tmp_path: Path) -> Any:
    def _write(doc: Any, name: str = "instance.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(doc))
        return path
    return _write


QEMU_GA = "/usr/sbin/qemu-ga"


class QgaAgent:
    """A real qemu-ga listening on a unix socket in a temporary directory."""

    def __init__(self, tmp: Path) -> None:
        self.sock = tmp / "qga.sock"
        self.state = tmp / "state"
        self.state.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.sock.exists():
            self.sock.unlink()
        self.proc = subprocess.Popen(
            [QEMU_GA, "-m", "unix-listen", "-p", str(self.sock), "-t", str(self.state),
             "-f", str(self.state / "pid")], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            assert time.monotonic() < deadline, "qemu-ga did not create its socket"
            assert self.proc.poll() is None, "qemu-ga exited"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:  # (a qemu-ga that was stopped mid-request may ignore SIGTERM: measured
                # 10 s in test_silent_agent_times_out_without_hanging; it is killed)
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class FaultyTransport(SocketTransport):
    """The real socket client; ``fault`` runs right before guest command number ``at``
    (counting every command sent, the first being 0)."""

    def __init__(self, path: Path, timeout: float, at: int,
                 fault: Callable[[], None]) -> None:
        super().__init__(path, timeout)
        self.at = at
        self.fault = fault
        self.sent: list[str] = []

    def command(self, execute: str, arguments: dict[str, Any] | None,
                timeout: float) -> Any:
        if len(self.sent) == self.at:
            self.fault()
        self.sent.append(execute)
        return super().command(execute, arguments, timeout)


@pytest.fixture
def qga(tmp_path: Path) -> Iterator[QgaAgent]:
    agent = QgaAgent(tmp_path)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="session")
def openstack_peer() -> Iterator[Any]:
    """The real local OpenStack (scripts/openstack-peer.sh): started for the session
    unless it already runs."""
    from helpers.openstack import peer_running

    with peer_running() as peer:
        yield peer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's ``--dist loadgroup`` (scripts/test.sh runs the whole suite
    on two workers): everything that uses the OpenStack peer on one worker (the session
    starts and stops one peer); each end-to-end module on one worker (its images, drives
    and booted guests are module fixtures), test_e2e_releases one group per release (its
    boots are the longest run). Other tests spread freely."""
    for item in items:
        if "openstack_peer" in getattr(item, "fixturenames", ()) \
                or item.get_closest_marker("openstack") is not None:
            group = "openstack"
        elif item.get_closest_marker("e2e") is not None:
            group = item.nodeid.split("::", 1)[0]
            params = getattr(getattr(item, "callspec", None), "params", {})
            if "release" in params:
                group += f"@{params['release']}"
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))
