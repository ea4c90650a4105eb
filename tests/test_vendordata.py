"""The vendordata service without the OpenStack peer (issue 20): the real ``netinject
vendordata serve`` (gunicorn) on loopback against slow and oversized clients, and the
service's logic against a STAND-IN cloud (helpers.vendordata.StubCloud: in-memory Glance
and Neutron answers, slow or failing on demand, where no real one can misbehave so)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from helpers.vendordata import (
    INJECT_IMAGE,
    LEGACY_IMAGE,
    Captured,
    StubCloud,
    address,
    request,
    serve,
    slow_clients,
    wsgi_call,
)
from netinject.openstack.server import Refused, RequestReader, read_timeout_from_env
from netinject.openstack.service import Settings, Vendordata
from netinject.openstack.wsgi import App

NOVA_READ_TIMEOUT = 5.0


def _timed_get(url: str) -> float:
    t0 = time.monotonic()
    r = requests.get(url + "healthcheck", timeout=NOVA_READ_TIMEOUT)
    assert r.status_code == 200, r.text
    return time.monotonic() - t0


# -- V1: slow clients -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, Path]]]:
    """``netinject vendordata serve`` with auth (keystone) and without (no-auth): (url,
    log) each, shared by this module's tests."""
    tmp = tmp_path_factory.mktemp("serve")
    with serve(tmp) as keystone, serve(tmp, "--no-auth") as no_auth:
        yield {"keystone": keystone, "no-auth": no_auth}


@pytest.mark.parametrize("auth", ["keystone", "no-auth"])
def test_slow_clients_do_not_stall_the_service(
        auth: str, servers: dict[str, tuple[str, Path]]) -> None:
    """Sixteen connections trickling a byte every 0.5 s (half their headers, half their
    bodies) against one worker of 8 threads: the health check is still answered well
    within nova's 5 s read timeout, with and without auth."""
    url, log = servers[auth]
    with slow_clients(url, count=16) as stats:
        took = [_timed_get(url) for _ in range(3)]
        assert max(took) < 1.0, (took, stats, log.read_text()[-2000:])
        assert stats["sent"] >= 16


def _raw(url: str, data: bytes, timeout: float = 4.0, close_after: bool = False) -> bytes:
    """Send raw bytes; what the server answers until it closes (or ``timeout``)."""
    host, port = address(url)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        if close_after:
            s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def test_a_client_that_never_closes_does_not_stall_the_event_loop(
        servers: dict[str, tuple[str, Path]]) -> None:
    """gunicorn's gthread worker lingers up to 2 s in its event loop (blocking) closing
    a connection whose client does not close its end: six such clients stalled the
    health check ~10 s. The close now lingers in the event loop without blocking it."""
    url, _log = servers["no-auth"]
    host, port = address(url)
    held = []
    for _ in range(6):
        s = socket.create_connection((host, port))
        s.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        held.append(s)
    time.sleep(0.2)
    try:
        assert _timed_get(url) < 1.0
    finally:
        for s in held:
            s.close()


def test_a_request_not_whole_within_the_read_timeout_gets_408(tmp_path: Path) -> None:
    with serve(tmp_path, "--no-auth", "--read-timeout", "1") as (url, log):
        t0 = time.monotonic()
        got = _raw(url, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\"",
                   timeout=4.0)
        took = time.monotonic() - t0
        assert got.startswith(b"HTTP/1.1 408 "), got
        assert 0.9 < took < 2.5, took
        assert "refused a request from 127.0.0.1: 408" in log.read_text()


@pytest.mark.parametrize("auth", ["keystone", "no-auth"])
@pytest.mark.parametrize("head", [
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n",
], ids=["length", "chunked"])
def test_a_body_over_the_limit_is_refused_before_it_is_read(
        auth: str, head: bytes, servers: dict[str, tuple[str, Path]]) -> None:
    """413 as soon as the headers (or a chunk's size) say the body is over 1 MiB: before
    the app, so before authentication too, and without waiting for the body."""
    url, _log = servers[auth]
    t0 = time.monotonic()
    got = _raw(url, head, timeout=4.0)
    assert got.startswith(b"HTTP/1.1 413 "), got
    assert time.monotonic() - t0 < 1.0
    assert b'"error": "the body is over 1048576 bytes"' in got


def test_requests_read_whole_keep_http_working(
        servers: dict[str, tuple[str, Path]]) -> None:
    """What the worker's own reading must not break: keep-alive, pipelining, chunked
    bodies, Expect: 100-continue, and gunicorn's own answers to bad framing."""
    url, _log = servers["no-auth"]
    with requests.Session() as session:  # keep-alive: one connection
        for _ in range(3):
            assert session.get(url + "healthcheck", timeout=5).status_code == 200
    hc = b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n"
    got = _raw(url, hc + hc + b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n"
               b"Connection: close\r\n\r\n")
    assert got.count(b"HTTP/1.1 200 OK") == 3, got
    got = _raw(url, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                    b"Connection: close\r\n\r\n2\r\n[]\r\n0\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400 "), got  # no Content-Length: not JSON
    host, port = address(url)
    with socket.create_connection((host, port), timeout=4) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"[]")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        assert b"the body is not a JSON object" in answer
    got = _raw(url, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                    b"Content-Length: 3\r\n\r\n[]")
    assert got.startswith(b"HTTP/1.1 400 "), got


@pytest.mark.parametrize(("data", "end"), [
    (b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n", 38),
    (b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]GET / HTTP/1.1\r\n", 40),
    (b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n[", None),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;x=1\r\n[]\r\n0\r\n"
     b"\r\n", 63),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\nT: 1\r\n"
     b"\r\n", 65),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n", None),
    # Framing gunicorn refuses: the request ends with its headers (gunicorn says 400).
    (b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", 57),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 39),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 44),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", 66),
    (b"POST / HTTP/1.1\nContent-Length: 0\n\n", 35),
], ids=["no-body", "length+pipelined", "length-short", "chunked", "trailers",
        "chunked-short", "two-lengths", "negative", "gzip", "chunked+length", "bare-lf"])
def test_the_worker_finds_where_a_request_ends(data: bytes, end: int | None) -> None:
    reader = RequestReader(body_max=1024)
    for i in range(len(data)):  # byte by byte, as a trickling client sends it
        reader.feed(data[i:i + 1])
        if reader.complete:
            break
    assert reader.end == end


@pytest.mark.parametrize(("data", "status"), [
    (b"POST / HTTP/1.1\r\nContent-Length: 1025\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + b"x" * 1024
     + b"\r\n1\r\n", 413),
    (b"GET / HTTP/1.1\r\nX: " + b"x" * 70_000, 431),
])
def test_the_worker_refuses_requests_over_its_limits(data: bytes, status: int) -> None:
    reader = RequestReader(body_max=1024)
    with pytest.raises(Refused) as refused:
        reader.feed(data)
    assert refused.value.status == status


def test_the_workers_read_timeout_comes_from_the_environment() -> None:
    from netinject.errors import UsageError

    assert read_timeout_from_env({}) == 5.0
    assert read_timeout_from_env({"NETINJECT_READ_TIMEOUT": "2.5"}) == 2.5
    for bad in ("x", "0", "-1", "301"):
        with pytest.raises(UsageError, match="NETINJECT_READ_TIMEOUT"):
            read_timeout_from_env({"NETINJECT_READ_TIMEOUT": bad})


# -- the service's logic against the stand-in cloud ---------------------------------------------


@contextlib.contextmanager
def stub_service(stub: StubCloud | None = None, **settings: Any
                 ) -> Iterator[tuple[Vendordata, StubCloud]]:
    stub = stub or StubCloud()
    svc = Vendordata(Settings(cloud="stub", **settings), connect=stub.connect)
    try:
        yield svc, stub
    finally:
        svc.settle()
        svc.close()


def test_deeply_nested_json_is_a_400_without_a_traceback() -> None:
    """V2: json.loads raised RecursionError, which only ValueError was caught for: a 500
    and a traceback in the log."""
    with stub_service() as (svc, _stub), Captured() as log:
        app = App(svc, None)
        for body in (b"[" * 100_000 + b"]" * 100_000,
                     b'{"instance-id": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"):
            status, _headers, reply = wsgi_call(app, body=body)
            assert status == 400, reply
            assert json.loads(reply) == {"error": "the body is nested too deeply"}
        assert log.tracebacks() == []


@pytest.mark.parametrize("error", [
    "connect", "catalog"])
def test_keystone_or_catalog_failures_are_a_502_without_the_reason(error: str) -> None:
    """V3: the proxies (conn.image, conn.network) were looked up outside the guarded
    call, so Keystone or the catalog failing was a 500 whose reply held the auth URL.
    Now 502 naming the call; the reason (with the URL) only in the log."""
    from keystoneauth1 import exceptions as ks_exc

    url = "http://keystone.internal.example:5000/v3"
    failure: BaseException = (
        ks_exc.ConnectFailure(f"Unable to establish connection to {url}/auth/tokens")
        if error == "connect" else
        ks_exc.EndpointNotFound(f"internal endpoint for image service in Nowhere region "
                                f"not found (catalog from {url})"))
    with stub_service(StubCloud(auth_error=failure)) as (svc, _stub), Captured() as log:
        status, _headers, reply = wsgi_call(App(svc, None),
                                            body=json.dumps(request()).encode())
        assert status == 502, reply
        assert json.loads(reply) == {
            "error": f"Glance: image {INJECT_IMAGE} failed (the reason is in the "
                     "service's log)"}
        assert "keystone.internal" in log.text()
        assert log.tracebacks() == []


def test_the_answer_follows_the_hostname_nova_sends() -> None:
    """V4: answers were kept per instance and image only: a new hostname got the old
    answer, even past --fresh (the Neutron revisions had not changed)."""
    with stub_service() as (svc, stub):
        iid = str(uuid.uuid4())
        first = svc.handle(request(iid, hostname="vm1"))
        assert (first.status, first.how) == (200, "built")
        assert first.body["files"]["hostname"] == "vm1\n"
        assert svc.handle(request(iid, hostname="vm1")).how == "cached"
        renamed = svc.handle(request(iid, hostname="web-2"))
        assert renamed.how == "built"
        assert renamed.body["files"]["hostname"] == "web-2\n"
        svc.settle()
        # Past the fresh window, with the same revisions in Neutron: still the hostname
        # of this request.
        svc.settings = Settings(cloud="stub", fresh=0)
        again = svc.handle(request(iid, hostname="vm1"))
        assert again.body["files"]["hostname"] == "vm1\n"
        assert svc.handle(request(iid, hostname="vm1")).how == "revalidated"
        # The image too (a legacy image's {} is not served for an injecting one).
        assert svc.handle(request(iid, LEGACY_IMAGE)).body == {}
        assert svc.handle(request(iid, hostname="vm1")).body["files"]["hostname"] == "vm1\n"
        assert stub.listings >= 5


def test_builds_are_bounded_and_calls_over_the_bound_get_503_at_once() -> None:
    """V5: with a slow Neutron, a burst of distinct instance ids queued a build each
    (they go on after their 504), so the next real call waited behind all of them and
    got 504. Now at most --max-builds builds are under way or queued; a call that needs
    one more is answered 503 with Retry-After at once, and the next real call after the
    burst is built in time."""
    stub = StubCloud(delay=0.3)
    with stub_service(stub, deadline=1.0, workers=4, max_builds=8) as (svc, _), \
            Captured() as log:
        app = App(svc, None)
        results: list[tuple[int, dict[str, str], float]] = []
        lock = threading.Lock()

        def call() -> None:
            t0 = time.monotonic()
            status, headers, _ = wsgi_call(app, body=json.dumps(request()).encode())
            with lock:
                results.append((status, headers, time.monotonic() - t0))

        burst = [threading.Thread(target=call) for _ in range(60)]
        for t in burst:
            t.start()
        for t in burst:
            t.join(30)
        statuses = sorted(s for s, _, _ in results)
        busy = [(h, took) for s, h, took in results if s == 503]
        assert len(results) == 60
        assert statuses.count(200) >= 8, statuses
        assert len(busy) >= 40, statuses
        assert all(h.get("Retry-After") == "1" for h, _ in busy)
        assert max(took for _, took in busy) < 0.5
        assert stub.peak <= 8
        t0 = time.monotonic()
        status, _headers, reply = wsgi_call(app, body=json.dumps(request()).encode())
        assert status == 200, reply
        assert time.monotonic() - t0 < 1.0
        assert "busy (8 builds are under way or queued; at most 8 at once): answering " \
               "503, Retry-After 1 s" in log.text()
        assert log.text().count("answering 503") < 5  # at most one line a second


def test_a_request_that_waited_past_the_deadline_gets_503_without_a_build() -> None:
    with stub_service(deadline=4.0) as (svc, stub):
        late = svc.handle(request(), arrived=time.monotonic() - 4.5)
        assert (late.status, late.retry_after) == (503, 4)
        assert stub.listings == 0
        status, _headers, _ = wsgi_call(App(svc, None), body=json.dumps(request()).encode())
        assert status == 200


def test_bad_values_are_shortened_in_the_reply_and_the_log() -> None:
    """V6: a 900 KB instance-id came back whole in the 400 and in the log line."""
    with stub_service() as (svc, _stub), Captured() as log:
        body = json.dumps({**request(), "instance-id": "x" * 900_000}).encode()
        status, _headers, reply = wsgi_call(App(svc, None), body=body)
        assert status == 400
        assert len(reply) < 400, len(reply)
        assert json.loads(reply)["error"].startswith("instance-id: 'xxx")
        assert "<900002 characters>" in json.loads(reply)["error"]
        assert max(len(r.getMessage()) for r in log.records) < 400


@pytest.mark.parametrize(("field", "value", "message"), [
    ("hostname", "bad_host!", "hostname: 'bad_host!' is not an RFC 1123 host name"),
    ("hostname", ["vm1"], "hostname: ['vm1'] is not a string"),
    ("image-id", 7, "image-id: 7 is not an image id"),
    ("instance-id", None, "instance-id: None is not a uuid"),
])
def test_bad_fields_of_novas_request_are_400s_naming_them(
        field: str, value: Any, message: str) -> None:
    """A hostname the guest could not use is nova's field, not Neutron data: 400."""
    with stub_service() as (svc, stub):
        answer = svc.handle({**request(), field: value})
        assert answer.status == 400
        assert answer.body["error"].startswith(message), answer.body
        assert stub.listings == 0


@pytest.mark.parametrize(("key", "value"), [("NETINJECT_DEADLINE", "-1"),
                                            ("NETINJECT_DEADLINE", "0"),
                                            ("NETINJECT_DEADLINE", "61"),
                                            ("NETINJECT_FRESH", "-5")])
def test_the_environment_is_held_to_serves_bounds(key: str, value: str) -> None:
    """The WSGI factory's settings from the environment take the bounds ``vendordata
    serve`` takes from its options."""
    from netinject.errors import UsageError
    from netinject.openstack.wsgi import settings_from_env

    with pytest.raises(UsageError, match=key):
        settings_from_env({"NETINJECT_CLOUD": "x", key: value})
    settings_from_env({"NETINJECT_CLOUD": "x", "NETINJECT_DEADLINE": "4",
                       "NETINJECT_FRESH": "0"})


def test_the_default_fresh_window_is_the_same_everywhere() -> None:
    import argparse

    from netinject.cli.commands import vendordata as cli
    from netinject.openstack.service import DEFAULT_FRESH
    from netinject.openstack.wsgi import settings_from_env

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["vendordata", "serve", "--cloud", "x"])
    assert args.fresh == DEFAULT_FRESH == Settings(cloud="x").fresh
    assert settings_from_env({"NETINJECT_CLOUD": "x"})[0].fresh == DEFAULT_FRESH
