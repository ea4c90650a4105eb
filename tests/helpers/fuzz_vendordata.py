"""The fuzz suite's ``vendordata`` category: hostile requests to the vendordata service,
without the OpenStack peer (tests/helpers/fuzz.py runs it with the other categories).

Two paths, both seeded:

* In process (most inputs): nova's POST body with hostile values in every key (lists,
  numbers, nulls, huge strings, non-ASCII, bad uuids, deep nesting), raw bodies that
  are not JSON, nested too deeply, truncated or lying about their length, bad methods,
  paths, content types and identity headers, through the WSGI app (``wsgi.App``) around
  a real ``Vendordata``. Its cloud is a STAND-IN (``helpers.vendordata.StubCloud``:
  in-memory Glance and Neutron; this suite runs without the peer, and no real cloud can
  be made to fail or hang on demand): a good one, one with bad Neutron data (422), one
  whose Keystone fails (502) and a slow one (504, 503). So a body goes through parsing,
  the cache, a real build, the renderers and the payload.
* Over loopback (a share of inputs, and a few slow ones): the real ``netinject
  vendordata serve`` (gunicorn, netinject's worker), with and without auth, against a
  clouds.yaml whose Keystone is a closed port: raw HTTP with hostile request lines,
  framing (lengths missing, duplicated, negative, too big, lying; chunked, bad chunks,
  other codings), Expect, oversized headers and bodies, pipelining, bodies cut short,
  and clients that trickle a request or send nothing.

Oracle, for every input: each answer is a well-formed HTTP response whose status is in
the documented set (:data:`STATUSES`; 401/403 only with auth), never 500; a JSON body
(the app's answers) of bounded size (:data:`REPLY_MAX`) that names no URL of the cloud;
no hang (every input answered within its time); no traceback in the log (and no log
line over :data:`LOG_LINE_MAX`).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.fuzz import Tally
from helpers.vendordata import (
    INJECT_IMAGE,
    LEGACY_IMAGE,
    Captured,
    StubCloud,
    address,
    serve,
    wsgi_call,
)
from netinject.openstack.service import Settings, Vendordata
from netinject.openstack.wsgi import App

STATUSES = {200, 400, 401, 403, 404, 405, 408, 413, 414, 417, 422, 431, 501, 502, 503,
            504}
"""What the service may answer: the app's own (200, 400, 401/403 with auth, 405, 413,
422, 502, 503, 504), netinject's worker's (408, 413, 431, 503) and gunicorn's to
requests it cannot parse (400, 414, 417, 431, 501). 404 is documented but unused (any
path takes nova's POST)."""
REPLY_MAX = 64 * 1024  # the stand-in's payload is ~7 KiB; refusals under 1 KiB
ERROR_MAX = 2 * 1024
PARSER_ERROR_MAX = 8 * 1024
"""gunicorn's own 400s quote the request line, which it bounds (4094 bytes)."""
LOG_LINE_MAX = 2 * 1024  # the service's own log lines
SERVER_LOG_LINE_MAX = 32 * 1024
"""gunicorn's access and error lines quote the request line and headers, which it
bounds itself (limit_request_line 4094, limit_request_field_size 8190)."""
SECRET = "keystone.internal.example"  # in the failing stand-in's errors: never in a reply
READ_TIMEOUT = 2.0  # the loopback servers' --read-timeout

KEYS = ["project-id", "instance-id", "image-id", "user-data", "hostname", "metadata",
        "boot-roles"]
HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1.5, 2 ** 70, [], {}, [None], {"a": None}, [[[["x"]]]], "",
    " ", "\n", "x\ny", "é", "\u212a", "web-\u212a", "\x00", "\ud800", "\x1b[2J", "$(id)",
    "../../etc/passwd", "1" * 5000, "a" * 300, "vm1.", "-vm", "vm_1", "a" * 64,
    ".".join(["a" * 63] * 5), "00000000-0000-0000-0000-00000000000g",
    "0" * 32, "6F9619FF-8B86-D011-B42D-00C04FC964FF", " 6f9619ff-8b86-d011-b42d-00c04fc964ff",
    "6f9619ff-8b86-d011-b42d-00c04fc964ff\n", "{6f9619ff-8b86-d011-b42d-00c04fc964ff}",
    "urn:uuid:6f9619ff-8b86-d011-b42d-00c04fc964ff", "6f9619ff8b86d011b42d00c04fc964ff",
    "a:b", "x" * 256, "%00", "\\", "'", '"',
]
HOSTNAMES = ["vm1", "web-2", "db.example.org", "a" * 63, None]
RAW_BODIES = [b"", b" ", b"null", b"[]", b"{}", b'""', b"0", b"{", b'{"instance-id": ',
              b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
              b"9" * 5000, b'{"instance-id": 1e999}', b"NaN", b'{"a": Infinity}',
              b"\xff\xfe{}", b"\xef\xbb\xbf{}", b'{"hostname": "\xc3\x28"}',
              b'{"instance-id": "\\ud800"}', b"\x00" * 64, b'{"a": 1, "a": 2}']
METHODS = ["POST"] * 30 + ["GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW"]
PATHS = ["/"] * 10 + ["/healthcheck", "/healthcheck/", "/openstack/latest", "//",
                      "/%2e%2e/", "/a b", "/\u00e9", "/" + "a" * 3000, "/" + "a" * 5000]
CONTENT_TYPES = ["application/json"] * 6 + [None, "text/plain",
                                            "application/json; charset=utf-16",
                                            "multipart/form-data; boundary=x", "\x00"]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def nova_body(rng: random.Random, instances: list[str]) -> bytes:
    """nova's body, often with hostile values, keys dropped or added; now and then raw
    bytes that are not such a body at all."""
    if rng.random() < 0.12:
        raw = rng.choice(RAW_BODIES)
        if raw and rng.random() < 0.3:
            raw = raw[:rng.randrange(len(raw))]  # cut short
        return raw
    body: dict[str, Any] = {
        "project-id": _uuid(rng), "instance-id": rng.choice(instances),
        "image-id": rng.choice([INJECT_IMAGE] * 6 + [LEGACY_IMAGE, _uuid(rng), "", None]),
        "user-data": None, "hostname": rng.choice(HOSTNAMES), "metadata": {},
        "boot-roles": "member,reader"}
    if rng.random() < 0.6:
        for _ in range(rng.randint(1, 3)):
            roll = rng.random()
            key = rng.choice(KEYS)
            if roll < 0.7:
                body[key] = _hostile(rng)
            elif roll < 0.85:
                body.pop(key, None)
            else:
                body[rng.choice(["zzz", "instance_id", "", "\u00e9"])] = _hostile(rng)
    text = json.dumps(body, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.05:
        text = text[:rng.randrange(len(text))]  # truncated JSON
    return text.encode("utf-8", "surrogatepass")


def _hostile(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.02:
        return "x" * 900_000
    if roll < 0.1:
        value: Any = "x"
        for _ in range(rng.randint(1, 200)):
            value = [value] if rng.random() < 0.5 else {"k": value}
        return value
    return rng.choice(HOSTILE)


# -- the oracle --------------------------------------------------------------------------------


def check_reply(status: int, headers: dict[str, str], body: bytes, auth: bool) -> list[str]:
    """What is wrong with one answer of the app (an empty list: nothing)."""
    bad = []
    if status not in STATUSES or status == 500 or (status in (401, 403) and not auth):
        bad.append(f"status {status}")
    if len(body) > (REPLY_MAX if status == 200 else ERROR_MAX):
        bad.append(f"a {len(body)}-byte reply")
    if headers.get("Content-Length") not in (None, str(len(body))):
        bad.append(f"Content-Length {headers.get('Content-Length')} for {len(body)} bytes")
    try:
        doc = json.loads(body)
    except ValueError:
        bad.append(f"a reply that is not JSON: {body[:80]!r}")
        return bad
    if not isinstance(doc, dict):
        bad.append(f"a reply that is not an object: {body[:80]!r}")
    elif status == 200 and doc and "format" not in doc and doc != {"status": "ok"}:
        bad.append(f"a 200 that is neither a payload nor {{}}: {body[:80]!r}")
    elif status != 200 and not isinstance(doc.get("error"), (str, dict)):
        bad.append(f"a {status} without an error: {body[:80]!r}")
    if SECRET in body.decode("utf-8", "replace") or (status == 502 and b"http" in body):
        bad.append(f"a reply naming the cloud's URL: {body[:120]!r}")
    return bad


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3}) [^\r\n]*")


def responses(data: bytes, head_request: bool = False
              ) -> tuple[list[tuple[int, dict[str, str], bytes]], str]:
    """The HTTP responses in what a connection received, 1xx skipped; and what is
    wrong with the stream ("" if nothing)."""
    out: list[tuple[int, dict[str, str], bytes]] = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return out, f"a response cut short: {data[:80]!r}"
        lines = data[:end].split(b"\r\n")
        m = _STATUS_LINE.fullmatch(lines[0])
        if m is None:
            return out, f"not a status line: {lines[0][:80]!r}"
        status = int(m.group(1))
        headers = {}
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if (status < 200 or head_request) else int(
            headers.get("content-length", "0") or 0)
        body = data[end + 4:end + 4 + length]
        if len(body) < length:
            return out, f"a {status} body cut short"
        data = data[end + 4 + length:]
        if status >= 200:
            out.append((status, headers, body))
            if head_request:
                # gunicorn's answers to requests it cannot parse carry a body whatever
                # the method (it closes the connection after them): the rest is that.
                break
    return out, ""


# -- in process --------------------------------------------------------------------------------


@dataclass
class _Variant:
    name: str
    app: Any
    auth: bool


@contextlib.contextmanager
def _apps() -> Iterator[list[_Variant]]:
    from keystoneauth1 import exceptions as ks_exc

    down = ks_exc.ConnectFailure(f"Unable to establish connection to http://{SECRET}:5000"
                                 "/v3/auth/tokens")
    services = {
        "good": Vendordata(Settings(cloud="stub", deadline=2.0),
                           connect=StubCloud().connect),
        "bad-data": Vendordata(Settings(cloud="stub", deadline=2.0),
                               connect=StubCloud(bad_data=True).connect),
        "keystone-down": Vendordata(Settings(cloud="stub", deadline=2.0),
                                    connect=StubCloud(auth_error=down).connect),
        "slow": Vendordata(Settings(cloud="stub", deadline=0.05, max_builds=2),
                           connect=StubCloud(delay=0.2).connect),
    }
    variants = [_Variant(name, App(svc, None), False) for name, svc in services.items()]
    variants.append(_Variant("good+roles", App(services["good"], ("admin", "service")),
                             True))
    try:
        yield variants
    finally:
        for svc in services.values():
            svc.close()


def _in_process(rng: random.Random, variants: list[_Variant], instances: list[str],
                tally: Tally, log: Captured, n: int) -> None:
    weights = [6, 1, 1, 1, 2]
    variant = rng.choices(variants, weights)[0]
    method, path = rng.choice(METHODS), rng.choice(PATHS)
    body = nova_body(rng, instances)
    length: str | None = None
    if rng.random() < 0.1:
        length = rng.choice(["-1", "abc", "", "99999999999", str(len(body) + 10),
                             str(max(0, len(body) - 3)), "1e3", " 5", "\u0661"])
    headers: dict[str, str] = {}
    if variant.auth:
        headers["X-Identity-Status"] = rng.choice(["Confirmed"] * 3 + ["Invalid", ""])
        headers["X-Roles"] = rng.choice(["admin", "member,service", "reader", "", "x" * 500])
    ctype = rng.choice(CONTENT_TYPES)
    arrived = time.monotonic() - 10 if rng.random() < 0.02 else None
    environ_extra = {"netinject.arrived": arrived} if arrived is not None else {}
    tally.inputs += 1
    before = len(log.records)
    t0 = time.monotonic()
    try:
        status, got_headers, reply = wsgi_call(variant.app, method, path, body, headers,
                                               content_length=length, content_type=ctype,
                                               extra=environ_extra)
    except BaseException as exc:
        tally.finding("violations", f"vendordata input {n} ({variant.name}): "
                                    f"{type(exc).__name__}: {exc}"[:300])
        return
    took = time.monotonic() - t0
    bad = check_reply(status, got_headers, reply, variant.auth)
    if took > 3.0:
        bad.append(f"answered after {took:.1f} s")
    for record in log.records[before:]:
        text = record.getMessage()
        if record.exc_info or "Traceback" in text:
            bad.append(f"a traceback in the log: {text[:200]!r}")
        if len(text) > LOG_LINE_MAX:
            bad.append(f"a {len(text)}-character log line")
    _count(tally, f"app {status}")
    if bad:
        tally.finding("violations", f"vendordata input {n} ({variant.name}, {method} "
                                    f"{path[:40]!r}, body {body[:60]!r}): {bad[:3]}")
    elif status == 200:
        tally.accepted += 1
    else:
        tally.refused += 1


# -- over loopback -----------------------------------------------------------------------------


def raw_request(rng: random.Random, instances: list[str], auth: bool) -> tuple[bytes, bool]:
    """(bytes to send, half-close after them) for one hostile HTTP request."""
    method = rng.choice([*METHODS, "", "G\x00T", "POST POST"])
    path = rng.choice(PATHS)
    version = rng.choice(["HTTP/1.1"] * 10 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.x", ""])
    body = nova_body(rng, instances)
    if rng.random() < 0.02:
        body = b"{" * (1536 * 1024)  # over the body limit
    lines = [f"{method} {path} {version}".strip(), "Host: vendordata.example"]
    ctype = rng.choice(CONTENT_TYPES)
    if ctype is not None:
        lines.append(f"Content-Type: {ctype}")
    if auth and rng.random() < 0.5:
        lines.append("X-Auth-Token: " + rng.choice(["gAAAAAB-not-a-token", "x" * 300, ""]))
    framing = rng.choice(["cl"] * 10 + [
        "cl-short", "cl-long", "cl-dup", "cl-neg", "cl-junk", "cl-huge", "none",
        "chunked", "chunked", "chunked-bad", "chunked-cut", "te-gzip", "te-cl",
        "te-unknown", "expect", "expect-odd", "big-header", "obs-fold", "bare-lf",
        "pipelined"])
    half_close = False
    payload = body
    if framing == "cl":
        lines.append(f"Content-Length: {len(body)}")
    elif framing == "cl-short":
        lines.append(f"Content-Length: {max(0, len(body) - 5)}")
    elif framing == "cl-long":
        lines.append(f"Content-Length: {len(body) + 50}")
        half_close = True
    elif framing == "cl-dup":
        lines += [f"Content-Length: {len(body)}", f"Content-Length: {len(body) + 1}"]
    elif framing == "cl-neg":
        lines.append("Content-Length: -1")
    elif framing == "cl-junk":
        lines.append("Content-Length: " + rng.choice(["abc", "+5", "0x10", "1 2", "\u0661"]))
    elif framing == "cl-huge":
        lines.append("Content-Length: " + rng.choice(["2097152", "9" * 30]))
    elif framing == "none":
        pass
    elif framing.startswith("chunked") or framing.startswith("te-"):
        coding = {"te-gzip": "gzip", "te-unknown": "foo"}.get(framing, "chunked")
        lines.append(f"Transfer-Encoding: {coding}")
        if framing == "te-cl":
            lines.append(f"Content-Length: {len(body)}")
        chunks = b""
        rest = body
        while rest:
            size = rng.randint(1, 4096)
            chunks += b"%x\r\n%s\r\n" % (len(rest[:size]), rest[:size])
            rest = rest[size:]
        if framing == "chunked-bad":
            chunks = b"zz\r\n" + chunks
        if framing == "chunked-cut":
            half_close = True
        else:
            chunks += b"0\r\n\r\n"
        payload = chunks
    elif framing in ("expect", "expect-odd"):
        lines += [f"Content-Length: {len(body)}",
                  "Expect: " + ("100-continue" if framing == "expect" else "200-ok")]
    elif framing == "big-header":
        lines += [f"Content-Length: {len(body)}", "X-Big: " + "b" * rng.choice([9000, 70000])]
    elif framing == "obs-fold":
        lines += [f"Content-Length: {len(body)}", "X-Folded: a", " b"]
    elif framing == "bare-lf":
        return ("\n".join([*lines, f"Content-Length: {len(body)}", "", ""]).encode(
            "utf-8", "surrogateescape") + body), False
    elif framing == "pipelined":
        lines.append(f"Content-Length: {len(body)}")
        first = ("\r\n".join([*lines, "", ""]).encode("utf-8", "surrogateescape") + body)
        return first + b"GET /healthcheck HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", \
            False
    lines.append("Connection: close")
    head = "\r\n".join([*lines, "", ""]).encode("utf-8", "surrogateescape")
    return head + payload, half_close


def exchange(url: str, data: bytes, half_close: bool, timeout: float,
             trickle: float = 0.0) -> tuple[bytes, float, bool]:
    """Send ``data`` (in ten pieces ``trickle`` seconds apart), read until the server
    closes: (what came back, seconds, whether it closed in time)."""
    host, port = address(url)
    t0 = time.monotonic()
    got = b""
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            if trickle:
                step = max(1, len(data) // 10)
                for i in range(0, len(data), step):
                    s.sendall(data[i:i + step])
                    time.sleep(trickle)
            else:
                s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered (413, 431) and stopped reading: read its answer
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            return got, time.monotonic() - t0, False
        except OSError:
            pass
    return got, time.monotonic() - t0, True


def _check_exchange(got: bytes, closed: bool, head_request: bool, auth: bool,
                    expect: set[int] | None = None) -> list[str]:
    bad = []
    if not closed:
        bad.append("no answer in time (a hang)")
    found, broken = responses(got, head_request)
    if broken:
        bad.append(broken)
    if not found and not broken:
        bad.append("no answer at all")
    for status, headers, body in found:
        if status not in STATUSES or (status in (401, 403) and not auth):
            bad.append(f"status {status}")
        ours = headers.get("content-type") == "application/json"
        if len(body) > (REPLY_MAX if status == 200 else
                        ERROR_MAX if ours else PARSER_ERROR_MAX):
            bad.append(f"a {len(body)}-byte reply")
        if SECRET in body.decode("utf-8", "replace"):
            bad.append("a reply naming the cloud's URL")
    if expect is not None and found and found[0][0] not in expect:
        bad.append(f"status {found[0][0]}, not one of {sorted(expect)}")
    return bad


def _over_loopback(rng: random.Random, servers: dict[bool, str], instances: list[str],
                   tally: Tally, n: int) -> None:
    auth = rng.random() < 0.4
    data, half_close = raw_request(rng, instances, auth)
    tally.inputs += 1
    try:
        got, _took, closed = exchange(servers[auth], data, half_close, READ_TIMEOUT + 4)
    except OSError as exc:
        tally.finding("violations", f"vendordata raw input {n}: {exc}")
        return
    found, _ = responses(got, data.startswith(b"HEAD "))
    _count(tally, f"http {found[0][0] if found else 'none'}")
    bad = _check_exchange(got, closed, data.startswith(b"HEAD "), auth)
    if bad:
        tally.finding("violations", f"vendordata raw input {n} ({data[:80]!r}): {bad[:3]}")
    elif got.startswith(b"HTTP/1.1 200") or got.startswith(b"HTTP/1.0 200"):
        tally.accepted += 1
    else:
        tally.refused += 1


def _slow(rng: random.Random, servers: dict[bool, str], instances: list[str],
          tally: Tally, count: int) -> None:
    """A few slow clients at once: ones that trickle a whole request within the read
    timeout (answered as usual), ones that stop half-way and ones that send nothing
    (408 at the read timeout)."""
    kinds = ["trickle-whole", "trickle-stop", "idle"]
    jobs = []
    for i in range(count):
        kind, auth = kinds[i % 3], rng.random() < 0.5
        body = json.dumps({"instance-id": rng.choice(instances), "image-id": INJECT_IMAGE,
                           "hostname": "vm1"}).encode()
        head = (f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        data = {"trickle-whole": head + body, "trickle-stop": head + body[:5],
                "idle": b""}[kind]
        jobs.append((kind, auth, data))
    results: list[tuple[str, bool, bytes, float, bool]] = []
    lock = threading.Lock()

    def run(kind: str, auth: bool, data: bytes) -> None:
        got, took, closed = exchange(servers[auth], data, False, READ_TIMEOUT + 4,
                                     trickle=0.1 if kind == "trickle-whole" else 0.0)
        with lock:
            results.append((kind, auth, got, took, closed))

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(READ_TIMEOUT + 10)
    for kind, auth, got, took, closed in results:
        tally.inputs += 1
        expect = ({401} if auth else {502}) if kind == "trickle-whole" else {408}
        found, _ = responses(got)
        _count(tally, f"slow {found[0][0] if found else 'none'}")
        bad = _check_exchange(got, closed, False, auth, expect)
        if kind != "trickle-whole" and not READ_TIMEOUT - 0.2 < took < READ_TIMEOUT + 1.5:
            bad.append(f"408 after {took:.1f} s, not at the {READ_TIMEOUT} s read timeout")
        if bad:
            tally.finding("violations", f"vendordata slow client ({kind}): {bad[:3]}")
        else:
            tally.refused += 1
    if len(results) < len(jobs):
        tally.finding("violations", f"vendordata slow clients: {len(jobs) - len(results)} "
                                    "never ended (a hang)")


def _count(tally: Tally, outcome: str) -> None:
    tally.outcomes[outcome] = tally.outcomes.get(outcome, 0) + 1


# -- the category ------------------------------------------------------------------------------


LOOPBACK_SHARE = 0.3


def vendordata_fuzz(count: int, seed: int) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    slow = min(6, max(3, count // 300))
    loopback = int((count - slow) * LOOPBACK_SHARE)
    in_process = count - slow - loopback
    instances = [_uuid(rng) for _ in range(8)]
    with Captured() as log, _apps() as variants:
        for n in range(in_process):
            # Fresh instances most of the time (a build each), known ones (the cache).
            pool = instances if rng.random() < 0.5 else [_uuid(rng)]
            _in_process(rng, variants, pool, tally, log, n)
            if len(log.records) > 10_000:
                del log.records[:5_000]
    if loopback + slow:
        with tempfile.TemporaryDirectory(prefix="netinject-fuzz-vd-") as tmp, \
                contextlib.ExitStack() as stack:
            servers: dict[bool, str] = {}
            logs: list[Path] = []
            for auth in (False, True):
                url, log_path = stack.enter_context(
                    serve(Path(tmp), *(() if auth else ("--no-auth",)),
                          "--read-timeout", str(READ_TIMEOUT)))
                servers[auth] = url
                logs.append(log_path)
            for n in range(loopback):
                _over_loopback(rng, servers, instances, tally, n)
            _slow(rng, servers, instances, tally, slow)
            for path in logs:
                for line in path.read_text(errors="replace").splitlines():
                    if "Traceback" in line or "Error handling request" in line:
                        tally.finding("violations", f"vendordata server log: {line[:200]}")
                    if len(line) > SERVER_LOG_LINE_MAX:
                        tally.finding("violations",
                                      f"vendordata server log: a {len(line)}-char line")
    return tally
