"""The guest-agent client against a real qemu-ga (Debian package qemu-guest-agent) the
test starts on a unix socket with a temporary state dir; file operations act on this
test's temporary directory."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from conftest import FaultyTransport
from conftest import QgaAgent as Agent
from netinject.qga import GuestAgent, QgaError, QgaTimeout, QgaUnavailable, SocketTransport


def test_ping_and_interfaces(qga: Agent) -> None:
    with GuestAgent.unix(qga.sock) as ga:
        ga.ping()
        names = {i["name"] for i in ga.network_interfaces()}
        assert "lo" in names


def test_sync_discards_garbage_and_stale_replies(qga: Agent) -> None:
    # A client that sent commands and left without reading the replies, plus garbage.
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(qga.sock))
    raw.sendall(b'{"execute": "guest-ping"}\n{"execute": "guest-info"}\n')
    time.sleep(0.2)
    raw.sendall(b"}}{garbage\xfe\n")
    transport = SocketTransport(qga.sock)
    transport.sock = raw  # reuse the dirty channel, as after an abandoned exchange
    transport._sync(time.monotonic() + 5)
    assert transport.command("guest-ping", None, 5) == {}
    info = transport.command("guest-info", None, 5)
    assert "version" in info
    transport.close()


def test_file_write_read_back_and_large_chunked_write(qga: Agent, tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    data = os.urandom(300 * 1024 + 17)  # several chunks, last one partial
    t = FaultyTransport(qga.sock, 10.0, -1, lambda: None)  # records, no fault
    with GuestAgent(t) as ga:
        ga.write_file(str(target), data)
        assert target.read_bytes() == data
        assert ga.read_file(str(target)) == data
    assert t.sent.count("guest-file-write") == 7


def test_agent_lost_between_chunks_is_an_error_not_a_hang(qga: Agent, tmp_path: Path) -> None:
    """qemu-ga killed after three of seven chunks (commands: open, then the writes):
    write_file raises a typed error at once, its handle's close failing quietly."""
    assert qga.proc is not None
    proc = qga.proc
    t = FaultyTransport(qga.sock, 2.0, 4, proc.kill)
    t0 = time.monotonic()
    with GuestAgent(t, 2.0) as ga, pytest.raises(QgaUnavailable):
        ga.write_file(str(tmp_path / "out.bin"), os.urandom(300 * 1024))
    assert time.monotonic() - t0 < 4
    assert t.sent[:5] == ["guest-file-open", *["guest-file-write"] * 4]


def test_exec_exit_code_and_output(qga: Agent) -> None:
    with GuestAgent.unix(qga.sock) as ga:
        ok = ga.exec("/bin/echo", ["hello", "agent"])
        assert ok.exitcode == 0
        assert ok.stdout == b"hello agent\n"
        bad = ga.exec("/bin/sh", ["-c", "echo oops >&2; exit 3"])
        assert bad.exitcode == 3
        assert bad.stderr == b"oops\n"
        fed = ga.exec("/bin/cat", [], input_data=b"from stdin")
        assert fed.stdout == b"from stdin"


def test_agent_error_becomes_typed_exception(qga: Agent, tmp_path: Path) -> None:
    with GuestAgent.unix(qga.sock) as ga, pytest.raises(QgaError) as exc:
        ga.write_file(str(tmp_path / "no/such/dir/file"), b"x")
    assert "No such file or directory" in str(exc.value)
    assert not isinstance(exc.value, (QgaTimeout, QgaUnavailable))


def test_silent_agent_times_out_without_hanging(qga: Agent) -> None:
    assert qga.proc is not None
    with GuestAgent.unix(qga.sock, timeout=0.5) as ga:
        ga.ping()
        os.kill(qga.proc.pid, signal.SIGSTOP)   # alive, but never answers
        t0 = time.monotonic()
        with pytest.raises(QgaTimeout):
            ga.ping()
        assert time.monotonic() - t0 < 2.5


def test_no_agent_is_unavailable(tmp_path: Path) -> None:
    with GuestAgent.unix(tmp_path / "absent.sock", timeout=1.0) as ga, \
            pytest.raises(QgaUnavailable):
        ga.ping()


def test_wait_ready_waits_for_an_agent_that_starts_late(tmp_path: Path) -> None:
    import threading

    late = Agent(tmp_path)
    timer = threading.Timer(0.5, late.start)
    timer.start()
    try:
        with GuestAgent.unix(late.sock, timeout=2.0) as ga:
            t0 = time.monotonic()
            ga.wait_ready(timeout=20, interval=0.1)
            assert time.monotonic() - t0 >= 0.25
    finally:
        timer.join()
        late.stop()
    with GuestAgent.unix(tmp_path / "never.sock", timeout=1.0) as ga, \
            pytest.raises(QgaUnavailable):
        ga.wait_ready(timeout=0.5, interval=0.1)
