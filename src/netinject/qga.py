"""A client for qemu-guest-agent.

Talks to the host end of the guest's ``org.qemu.guest_agent.0`` virtio-serial channel: a
unix socket (as QEMU exposes it) or, where libvirt owns the socket, through
``libvirt_qemu.qemuAgentCommand``, both behind :class:`GuestAgent`.

The protocol is JSON objects, one per line, no greeting. Replies of an earlier,
abandoned exchange may still be in the channel, so every session starts with
``0xFF`` + ``guest-sync-delimited``: the agent answers with ``0xFF`` and the id we sent,
and everything before that is discarded. Every call has a deadline; a dead or silent
agent raises :class:`QgaTimeout`/:class:`QgaUnavailable`, never hangs the caller.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import NetinjectError

DEFAULT_TIMEOUT = 10.0
CHUNK = 48 * 1024  # bytes per guest-file-write (base64 grows it by a third)


class QgaError(NetinjectError):
    """The agent answered with an error (``error.class`` and ``error.desc``)."""

    def __init__(self, message: str, error_class: str = "") -> None:
        super().__init__(message)
        self.error_class = error_class


class QgaTimeout(QgaError):
    """The agent did not answer in time."""


class QgaUnavailable(QgaError):
    """No agent at the other end (no socket, connection refused or closed)."""


class Transport(Protocol):
    def command(self, execute: str, arguments: dict[str, Any] | None,
                timeout: float) -> Any: ...

    def close(self) -> None: ...


class SocketTransport:
    """qemu-guest-agent on a unix socket (QEMU's ``-chardev socket``, or ``qemu-ga -m
    unix-listen``)."""

    def __init__(self, path: Path | str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = str(path)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self, deadline: float) -> socket.socket:
        if self.sock is not None:
            return self.sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise QgaUnavailable(f"no guest agent at {self.path}: {exc.strerror}") from None
        except TimeoutError:
            sock.close()
            raise QgaTimeout(f"guest agent at {self.path}: connect timed out") from None
        except OSError as exc:
            sock.close()
            raise QgaUnavailable(f"guest agent at {self.path}: {exc}") from None
        self.sock = sock
        self.buf = b""
        try:
            self._sync(deadline)
        except BaseException:
            self.close()
            raise
        return sock

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def _send(self, data: bytes, deadline: float) -> None:
        assert self.sock is not None
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            self.sock.sendall(data)
        except TimeoutError:
            self.close()
            raise QgaTimeout("guest agent: send timed out") from None
        except OSError as exc:
            self.close()
            raise QgaUnavailable(f"guest agent connection lost: {exc}") from None

    def _recv(self, deadline: float) -> bytes:
        assert self.sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.close()
            raise QgaTimeout("guest agent did not answer in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            self.close()
            raise QgaTimeout("guest agent did not answer in time") from None
        except OSError as exc:
            self.close()
            raise QgaUnavailable(f"guest agent connection lost: {exc}") from None
        if not data:
            self.close()
            raise QgaUnavailable("guest agent closed the connection")
        return data

    def _sync(self, deadline: float) -> None:
        sync_id = random.randrange(1, 2**31)
        self._send(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                         "arguments": {"id": sync_id}}).encode() + b"\n",
                   deadline)
        # Discard everything up to the agent's 0xFF, then expect our id.
        while True:
            at = self.buf.find(b"\xff")
            if at >= 0:
                self.buf = self.buf[at + 1:]
                break
            self.buf = b""
            self.buf += self._recv(deadline)
        while True:
            reply = self._read_json(deadline)
            if reply.get("return") == sync_id:
                return

    def _read_json(self, deadline: float) -> dict[str, Any]:
        while True:
            line, sep, rest = self.buf.partition(b"\n")
            if sep:
                self.buf = rest
                line = line.strip().lstrip(b"\xff")
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue  # garbage on the channel
                if isinstance(obj, dict):
                    return obj
                continue
            self.buf += self._recv(deadline)

    def command(self, execute: str, arguments: dict[str, Any] | None,
                timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        self._connect(deadline)
        msg: dict[str, Any] = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self._send(json.dumps(msg).encode() + b"\n", deadline)
        reply = self._read_json(deadline)
        if "error" in reply:
            err = reply["error"]
            raise QgaError(f"{execute}: {err.get('desc', err)}", str(err.get("class", "")))
        if "return" not in reply:
            self.close()
            raise QgaError(f"{execute}: unexpected reply {reply!r}")
        return reply["return"]


class LibvirtTransport:
    """The same commands through libvirt, for hosts where libvirt owns the agent socket."""

    def __init__(self, domain: str, uri: str = "qemu:///system") -> None:
        try:
            import libvirt  # type: ignore[import-not-found, unused-ignore]
            import libvirt_qemu  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise QgaUnavailable("libvirt-python is not installed (pip install "
                                 "libvirt-python, or use --qga SOCKET)") from None
        self._libvirt = libvirt
        # Errors become exceptions here; libvirt's default handler also prints them.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self._qemu = libvirt_qemu
        try:
            self.conn = libvirt.open(uri)
            self.dom = self.conn.lookupByName(domain)
        except libvirt.libvirtError as exc:
            raise QgaUnavailable(f"libvirt {uri}: {exc}") from None

    def command(self, execute: str, arguments: dict[str, Any] | None,
                timeout: float) -> Any:
        msg: dict[str, Any] = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        try:
            out = self._qemu.qemuAgentCommand(self.dom, json.dumps(msg), int(timeout), 0)
        except self._libvirt.libvirtError as exc:
            text = str(exc)
            if "timeout" in text.lower():
                raise QgaTimeout(f"{execute}: {text}") from None
            raise QgaError(f"{execute}: {text}") from None
        return json.loads(out).get("return")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


@dataclass(frozen=True)
class ExecResult:
    exitcode: int
    stdout: bytes
    stderr: bytes


class GuestAgent:
    """Typed operations on top of a transport."""

    def __init__(self, transport: Transport, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.t = transport
        self.timeout = timeout

    @classmethod
    def unix(cls, path: Path | str, timeout: float = DEFAULT_TIMEOUT) -> GuestAgent:
        return cls(SocketTransport(path, timeout), timeout)

    def close(self) -> None:
        self.t.close()

    def __enter__(self) -> GuestAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, execute: str, arguments: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        return self.t.command(execute, arguments, timeout or self.timeout)

    def ping(self) -> None:
        self.call("guest-ping")

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.5) -> None:
        """Ping until the agent answers (a guest that is still booting), at most
        ``timeout`` seconds; the last error is raised if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ping()
                return
            except QgaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(interval)

    # -- files -----------------------------------------------------------------------

    def _open(self, path: str, mode: str) -> int:
        return int(self.call("guest-file-open", {"path": path, "mode": mode}))

    def _close_handle(self, handle: int) -> None:
        with contextlib.suppress(QgaError):
            self.call("guest-file-close", {"handle": handle})

    def write_file(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` in the guest, in base64 chunks."""
        handle = self._open(path, "w")
        try:
            for off in range(0, len(data), CHUNK) or [0]:
                chunk = data[off:off + CHUNK]
                done = self.call("guest-file-write", {
                    "handle": handle, "buf-b64": base64.b64encode(chunk).decode()})
                if int(done.get("count", -1)) != len(chunk):
                    raise QgaError(f"guest-file-write {path}: short write "
                                   f"({done.get('count')} of {len(chunk)} bytes)")
            self.call("guest-file-flush", {"handle": handle})
        finally:
            self._close_handle(handle)

    def read_file(self, path: str) -> bytes:
        handle = self._open(path, "r")
        out = []
        try:
            while True:
                got = self.call("guest-file-read", {"handle": handle, "count": CHUNK})
                out.append(base64.b64decode(got.get("buf-b64", "")))
                if got.get("eof") or not got.get("count"):
                    break
        finally:
            self._close_handle(handle)
        return b"".join(out)

    # -- processes -------------------------------------------------------------------

    def exec(self, path: str, args: list[str] | None = None, input_data: bytes | None = None,
             timeout: float | None = None) -> ExecResult:
        """Run a program in the guest (argument list, no shell) and wait for it."""
        return self.wait(self.spawn(path, args, input_data), path, timeout)

    def spawn(self, path: str, args: list[str] | None = None,
              input_data: bytes | None = None) -> int:
        """Start a program in the guest; its pid. An error the agent answers with means
        it did not start; a timeout or a lost connection leaves that unknown."""
        arguments: dict[str, Any] = {"path": path, "arg": list(args or []),
                                     "capture-output": True}
        if input_data is not None:
            arguments["input-data"] = base64.b64encode(input_data).decode()
        return int(self.call("guest-exec", arguments)["pid"])

    def wait(self, pid: int, path: str = "program", timeout: float | None = None
             ) -> ExecResult:
        """Poll a spawned program until it exits (at most ``timeout``)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        delay = 0.01
        while True:
            st = self.call("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                return ExecResult(int(st.get("exitcode", -1)),
                                  base64.b64decode(st.get("out-data", "")),
                                  base64.b64decode(st.get("err-data", "")))
            if time.monotonic() > deadline:
                raise QgaTimeout(f"{path} did not finish in time in the guest")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    # -- network ---------------------------------------------------------------------

    def network_interfaces(self) -> list[dict[str, Any]]:
        return list(self.call("guest-network-get-interfaces"))
