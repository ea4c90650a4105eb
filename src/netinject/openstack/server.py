"""gunicorn for the vendordata service: :class:`Worker`, gunicorn's threaded worker
(gthread) made safe against slow clients on its own.

gunicorn's gthread worker hands a new connection to a pool thread (after at most 5 s
waiting for its first byte), and that thread reads the request with blocking ``recv``
calls and no time limit: a client that trickles its headers or body holds the thread as
long as it likes, and ``--threads`` such clients stall the worker (health checks
included). Its non-keep-alive close also lingers up to 2 s in the event loop, for every
client that does not close its end. gunicorn's own answer is a buffering proxy in front
(docs/operator-guide.md); this worker does that buffering itself:

* the event loop reads each request whole (headers and body, ``Content-Length`` or
  chunked) before a thread sees it; a thread then reads the request from memory, never
  from the socket, so no client can hold a thread by sending slowly;
* a request must arrive whole within ``read_timeout`` seconds of the connection (or, on
  a kept-alive connection, of its first byte): one deadline for headers and body
  together, which trickling cannot extend; past it the client gets 408 and the
  connection closes;
* a body over ``body_max`` (the app's BODY_MAX) is refused with 413 as soon as its
  ``Content-Length`` (or the chunks so far) says so, before it is read; headers over
  64 KiB get 431; all requests being read at once hold at most 64 MiB, beyond which new
  data is refused with 503;
* answers are written with a ``send_timeout``; closing connections linger in the event
  loop (at most 2 s), not in it blocking.

HTTP/1.x over plain TCP only (put TLS and HTTP/2 in a front proxy); the worker refuses
to start otherwise. The time a request arrived whole is handed to the app as
``environ["netinject.arrived"]`` (``time.monotonic()``), so the service's deadline
counts the time a request waited for a thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

from ..errors import UsageError
from .service import Throttled
from .wsgi import ARRIVED, BODY_MAX, REASONS

LOG = logging.getLogger("netinject.vendordata")

READ_TIMEOUT = 5.0
"""Seconds for a whole request (headers and body) to arrive: nova sends its request at
once (a few KiB), so this only bounds what a slow client can hold."""
SEND_TIMEOUT = 10.0
HEAD_MAX = 64 * 1024
CHUNKS_MAX = 4096
BUFFERED_MAX = 64 << 20
LINGER = 2.0
LINGER_MAX = 1024

_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")


class Refused(Exception):
    """A request answered by the worker itself (status and message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestReader:
    """Where one HTTP/1.x request ends in the bytes read so far, fed incrementally.

    Only the framing is read (the end of the headers; ``Content-Length``, or the chunks
    of ``Transfer-Encoding: chunked`` and their trailers); gunicorn's parser judges
    everything else. Framing gunicorn refuses (two lengths, a length and chunked,
    codings not ending in chunked, bad chunk sizes) ends the request where the reader
    stops understanding it, and gunicorn answers 400 from what is there.
    ``feed`` raises Refused for a request over a limit.
    """

    def __init__(self, body_max: int, head_max: int = HEAD_MAX) -> None:
        self.body_max = body_max
        self.head_max = head_max
        self.buf = bytearray()
        self.head_end: int | None = None
        self.end: int | None = None
        self.length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self._searched = 0
        self._pos = 0
        self._body = 0
        self._nchunks = 0

    @property
    def complete(self) -> bool:
        return self.end is not None

    def feed(self, data: bytes) -> None:
        self.buf += data
        if self.end is not None:
            return
        # On the wire: headers, the body and its chunk framing.
        if len(self.buf) > self.head_max + self.body_max + 16 * CHUNKS_MAX:
            raise Refused(413, f"the request is over {self.body_max} bytes")
        if self.head_end is None:
            self._head()
        if self.head_end is None or self.end is not None:
            return
        if self.chunked:
            self._chunks()
        elif self.length is not None and len(self.buf) >= self.head_end + self.length:
            self.end = self.head_end + self.length

    def _head(self) -> None:
        start = max(0, self._searched - 3)
        ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n")
                if (i := self.buf.find(sep, start)) >= 0]
        if not ends:
            self._searched = len(self.buf)
            if len(self.buf) > self.head_max:
                raise Refused(431, f"the request's headers are over {self.head_max} bytes")
            return
        end = min(ends)
        if end > self.head_max:
            raise Refused(431, f"the request's headers are over {self.head_max} bytes")
        self.head_end = end
        self._framing(bytes(self.buf[:end]).split(b"\n"))

    def _framing(self, lines: list[bytes]) -> None:
        assert self.head_end is not None
        lengths: list[bytes] = []
        codings: list[bytes] = []
        expect: list[bytes] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            key = name.strip().lower()
            if key == b"content-length":
                lengths.append(value.strip())
            elif key == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",")]
            elif key == b"expect":
                expect.append(value.strip().lower())
        if codings:
            if codings[-1] != b"chunked" or lengths:
                self.end = self.head_end  # gunicorn refuses this framing: no body
                return
            self.chunked = True
            self._pos = self.head_end
        elif lengths:
            if len(lengths) != 1 or not lengths[0].isdigit():
                self.end = self.head_end
                return
            if len(lengths[0]) > 18 or int(lengths[0]) > self.body_max:
                raise Refused(413, f"the body is over {self.body_max} bytes")
            self.length = int(lengths[0])
        else:
            self.end = self.head_end
            return
        self.expect_continue = (lines[0].rstrip(b"\r").endswith(b"HTTP/1.1")
                                and b"100-continue" in expect)

    def _chunks(self) -> None:
        buf = self.buf
        while True:
            nl = buf.find(b"\r\n", self._pos)
            if nl < 0:
                if len(buf) - self._pos > 1024:
                    self.end = len(buf)  # no chunk-size line: gunicorn says what is wrong
                return
            size_text = bytes(buf[self._pos:nl]).split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size_text):
                self.end = len(buf)
                return
            size = int(size_text, 16)
            if size == 0:
                trailers = buf.find(b"\r\n\r\n", nl)
                if trailers < 0:
                    if len(buf) - nl > self.head_max:
                        raise Refused(431, "the request's trailers are over "
                                           f"{self.head_max} bytes")
                    return
                self.end = trailers + 4
                return
            if self._body + size > self.body_max:
                raise Refused(413, f"the body is over {self.body_max} bytes")
            if self._nchunks >= CHUNKS_MAX:
                raise Refused(413, f"the body comes in over {CHUNKS_MAX} chunks")
            after = nl + 2 + size + 2
            if len(buf) < after:
                return
            if buf[after - 2:after] != b"\r\n":
                self.end = len(buf)
                return
            self._body += size
            self._nchunks += 1
            self._pos = after


class _Buffered:
    """What the parser reads a request from: the bytes read in the event loop."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def recv(self, size: int) -> bytes:
        chunk = bytes(self.data[self.pos:self.pos + size])
        self.pos += len(chunk)
        return chunk

    def rest(self) -> bytes:
        return bytes(self.data[self.pos:])


class _Conn(TConn):  # type: ignore[misc]
    """gunicorn's connection, whose graceful close lingers in the worker's event loop."""

    def __init__(self, worker: Worker, *args: Any) -> None:
        super().__init__(*args)
        self.worker = worker
        self.request: bytes | None = None
        self.arrived = 0.0
        self.continued = False

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self.worker.linger(self.sock)
        else:
            util.close(self.sock)


@dataclass
class _Reading:
    conn: _Conn
    reader: RequestReader
    deadline: float
    registered: bool = False
    counted: int = 0  # bytes in the worker's BUFFERED_MAX budget


class Worker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker reading every request whole first (see the module doc).

    Use it with ``--worker-class netinject.openstack.server.Worker``;
    NETINJECT_READ_TIMEOUT sets ``read_timeout`` (seconds). ``netinject vendordata
    serve`` uses it (``--read-timeout``)."""

    read_timeout: float | None = None
    body_max = BODY_MAX
    send_timeout = SEND_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.read_timeout is None:
            self.read_timeout = read_timeout_from_env()
        self._reading: dict[_Conn, _Reading] = {}  # in deadline order
        self._lingering: dict[socket.socket, float] = {}  # in deadline order
        self._buffered = 0
        self._local = threading.local()
        self._main = threading.get_ident()
        self._refusals = Throttled(LOG, 1.0)

    # -- start -------------------------------------------------------------------------------

    def init_process(self) -> None:
        cfg = self.cfg
        if (cfg.is_ssl or getattr(cfg, "protocol", "http") != "http"
                or getattr(cfg, "http2_cleartext", "off") != "off"):
            raise UsageError("netinject's gunicorn worker serves HTTP/1.x over plain TCP "
                             "only: put TLS or HTTP/2 in a proxy in front")
        self._main = threading.get_ident()
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app: Any = getattr(self, "wsgi")  # noqa: B009 (set by gunicorn, untyped)
        local = self._local

        def stamped(environ: dict[str, Any], start_response: Any) -> Any:
            arrived = getattr(local, "arrived", None)
            if arrived is not None:
                environ[ARRIVED] = arrived
            return app(environ, start_response)
        self.wsgi = stamped

    # -- the event loop: reading requests whole ------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self.enqueue_req(_Conn(self, self.cfg, sock, addr, listener.getsockname()))

    def enqueue_req(self, conn: _Conn) -> None:
        """A connection with a whole request goes to a thread; any other (new, kept
        alive and readable, or with the start of a next request read ahead) is read in
        the event loop first."""
        if conn.request is not None:
            super().enqueue_req(conn)
            return
        ahead = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.sock.setblocking(False)
        state = _Reading(conn, RequestReader(self.body_max),
                         time.monotonic() + float(self.read_timeout or READ_TIMEOUT))
        self._reading[conn] = state
        if ahead:
            self._feed(state, ahead)
        if conn in self._reading:
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self._readable, state))
            state.registered = True

    def _readable(self, state: _Reading, _sock: Any) -> None:
        try:
            data = state.conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client closed (or half-closed) before its request was whole
            self._forget(state)
            if state.reader.buf:
                self._refuse(state.conn, 400, "the request ended before it was whole",
                             state.reader.buf)
            else:
                self.nr_conns -= 1
                state.conn.close()
            return
        self._feed(state, data)

    def _feed(self, state: _Reading, data: bytes) -> None:
        conn, reader = state.conn, state.reader
        try:
            if self._buffered + len(data) > BUFFERED_MAX:
                raise Refused(503, "too many requests are being read; try again")
            self._buffered += len(data)
            state.counted += len(data)
            reader.feed(data)
        except Refused as refused:
            self._forget(state)
            self._refuse(conn, refused.status, refused.message, reader.buf)
            return
        if reader.complete:
            self._forget(state)
            conn.request = bytes(reader.buf)
            conn.arrived = time.monotonic()
            self.enqueue_req(conn)
        elif reader.expect_continue and not conn.continued:
            conn.continued = True
            with contextlib.suppress(OSError):
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _forget(self, state: _Reading) -> None:
        if self._reading.pop(state.conn, None) is None:
            return
        self._buffered -= state.counted
        state.counted = 0
        if state.registered:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(state.conn.sock)
            state.registered = False

    def _refuse(self, conn: _Conn, status: int, message: str,
                request: bytes | bytearray = b"") -> None:
        """Answer ``status`` and close (the answer to a HEAD request without its body)."""
        body = json.dumps({"error": message}).encode()
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n").encode()
        with contextlib.suppress(OSError):
            # Small: the socket's buffer takes it at once.
            conn.sock.send(head if request.startswith(b"HEAD ") else head + body)
        self._refusals.warning("refused a request from %s: %d (%s)",
                               conn.client[0] if isinstance(conn.client, tuple)
                               else conn.client, status, message)
        self.nr_conns -= 1
        conn.close(graceful=True)

    def linger(self, sock: socket.socket) -> None:
        """Close after the client has read the answer: half-close, then drop what it
        still sends until it closes or LINGER seconds pass (RFC 9112 section 9.6), in
        the event loop rather than blocking it."""
        if threading.get_ident() != self._main:
            self.method_queue.defer(self.linger, sock)
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            util.close(sock)
            return
        if len(self._lingering) >= LINGER_MAX:
            util.close(sock)
            return
        sock.setblocking(False)
        self._lingering[sock] = time.monotonic() + LINGER
        self.poller.register(sock, selectors.EVENT_READ, self._linger_readable)

    def _linger_readable(self, sock: socket.socket) -> None:
        try:
            if sock.recv(65536):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._unlinger(sock)

    def _unlinger(self, sock: socket.socket) -> None:
        self._lingering.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(sock)
        util.close(sock)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gunicorn's, waking up by the next read or linger deadline."""
        soonest: list[float] = []
        if self._reading:
            soonest.append(next(iter(self._reading.values())).deadline)
        if self._lingering:
            soonest.append(next(iter(self._lingering.values())))
        if soonest:
            timeout = max(0.0, min(timeout, min(soonest) - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        while self._reading:
            state = next(iter(self._reading.values()))
            if state.deadline > now:
                break
            self._forget(state)
            self._refuse(state.conn, 408, "the request did not arrive whole within "
                                          f"{self.read_timeout:g} s", state.reader.buf)
        while self._lingering:
            sock, deadline = next(iter(self._lingering.items()))
            if deadline > now:
                break
            self._unlinger(sock)

    # -- a thread: one whole request ---------------------------------------------------------

    def handle(self, conn: _Conn) -> Any:
        data, conn.request = conn.request, None
        if data is None:  # not read whole: never given to a thread
            return False
        conn.data_ready = True
        conn.sock.setblocking(True)
        conn.init()
        source = _Buffered(data)
        conn.parser.unreader.sock = source  # the request from memory; the socket writes
        self._local.arrived = conn.arrived
        try:
            keep = super().handle(conn)
        finally:
            self._local.arrived = None
            conn.continued = False
        rest = source.rest()
        if rest and keep:
            # A pipelined next request, read ahead: finish_request sends it back here.
            unreader = conn.parser.unreader
            unreader.unread(unreader.take_buffered() + rest)
        return keep

    def handle_request(self, req: Any, conn: _Conn) -> Any:
        conn.sock.settimeout(self.send_timeout)
        if conn.continued and hasattr(req, "_expected_100_continue"):
            req._expected_100_continue = False  # sent by the event loop already
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            self._refusals.warning("a client did not read its answer within %g s; closed",
                                   self.send_timeout)
            raise StopIteration from None


def read_timeout_from_env(env: dict[str, str] | None = None) -> float:
    text = (os.environ if env is None else env).get("NETINJECT_READ_TIMEOUT", "")
    try:
        value = float(text) if text else READ_TIMEOUT
    except ValueError:
        raise UsageError(f"NETINJECT_READ_TIMEOUT: {text!r} is not a number") from None
    if not 0 < value <= 300:
        raise UsageError("NETINJECT_READ_TIMEOUT must be in (0, 300] seconds")
    return value


def worker_class(read_timeout: float) -> type[Worker]:
    """The Worker with its read timeout set (``netinject vendordata serve``)."""
    return type("Worker", (Worker,), {"read_timeout": read_timeout,
                                      "__module__": __name__})
