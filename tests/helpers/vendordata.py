"""The vendordata service without the OpenStack peer: a STAND-IN cloud for the service's
reads (where no real Neutron misbehaves on demand, or none runs at all), slow HTTP
clients, an in-process WSGI call, and the real ``netinject vendordata serve`` (gunicorn)
against a clouds.yaml whose Keystone is a closed loopback port.

The stand-in answers exactly the raw proxy calls cloud.py makes (``conn.image.get``,
``conn.network.get``/``put``) with Neutron's and Glance's JSON shapes: every instance id
has one port on one IPv4 subnet (``bad_data``: with an address outside it, which
netinject refuses); :data:`INJECT_IMAGE` carries support_inject_ip=true,
:data:`LEGACY_IMAGE` does not, any other image id is a Glance 404.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from netinject.openstack.peer import free_port, running_service

INJECT_IMAGE = "11111111-1111-4111-8111-111111111111"
LEGACY_IMAGE = "22222222-2222-4222-8222-222222222222"
NETWORK = "33333333-3333-4333-8333-333333333333"
SUBNET = "44444444-4444-4444-8444-444444444444"
FAKE_CLOUD = "fake"


class _Response:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self.content = json.dumps(body).encode() if body is not None else b""
        self.text = self.content.decode()

    def json(self) -> Any:
        return json.loads(self.content)


class _Proxy:
    def __init__(self, cloud: StubCloud, service: str) -> None:
        self.cloud = cloud
        self.service = service

    def get(self, path: str, params: dict[str, Any] | None = None) -> _Response:
        return self.cloud.get(self.service, path, params or {})

    def put(self, path: str, json: Any = None) -> _Response:
        return self.cloud.put(self.service, path, json)


class StubCloud:
    """A STAND-IN Glance and Neutron, in memory (see the module doc). ``delay``: seconds
    each port listing takes (a slow Neutron); ``auth_error``: raised when the service
    first reaches for a proxy (Keystone or the catalog failing)."""

    def __init__(self, delay: float = 0.0, auth_error: BaseException | None = None,
                 bad_data: bool = False) -> None:
        self.delay = delay
        self.auth_error = auth_error
        self.bad_data = bad_data  # ports with an address outside their subnet (a 422)
        self.tags: dict[str, list[str]] = {}
        self.revisions: dict[str, int] = {}
        self.lock = threading.Lock()
        self.listings = 0  # port listings started
        self.running = 0  # port listings under way now
        self.peak = 0

    # -- what Vendordata's connect callable returns ------------------------------------

    def connect(self, _cloud: str, _timeout: float | None) -> StubCloud:
        return self

    @property
    def image(self) -> _Proxy:
        if self.auth_error is not None:
            raise self.auth_error
        return _Proxy(self, "image")

    @property
    def network(self) -> _Proxy:
        if self.auth_error is not None:
            raise self.auth_error
        return _Proxy(self, "network")

    # -- the objects -----------------------------------------------------------------------

    def port_of(self, instance: str) -> dict[str, Any]:
        digest = hashlib.sha256(instance.encode()).digest()
        pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"port:{instance}"))
        with self.lock:
            tags = list(self.tags.get(pid, []))
            revision = self.revisions.get(pid, 1)
        return {"id": pid, "device_id": instance, "network_id": NETWORK,
                "mac_address": "fa:16:3e:" + ":".join(f"{b:02x}" for b in digest[:3]),
                "fixed_ips": [{"subnet_id": SUBNET,
                               "ip_address": f"{'198.51.100' if self.bad_data else '192.0.2'}"
                                             f".{10 + digest[3] % 200}"}],
                "created_at": "2026-01-01T00:00:00Z", "tags": tags,
                "revision_number": revision}

    def get(self, service: str, path: str, params: dict[str, Any]) -> _Response:
        if service == "image":
            ident = path.rsplit("/", 1)[-1]
            if ident == INJECT_IMAGE:
                return _Response(200, {"id": ident, "support_inject_ip": "true"})
            if ident == LEGACY_IMAGE:
                return _Response(200, {"id": ident})
            return _Response(404, {"message": f"No image found with ID {ident}"})
        if path == "/ports":
            with self.lock:
                self.listings += 1
                self.running += 1
                self.peak = max(self.peak, self.running)
            try:
                time.sleep(self.delay)
                return _Response(200, {"ports": [self.port_of(str(params["device_id"]))]})
            finally:
                with self.lock:
                    self.running -= 1
        if path == "/subnets":
            return _Response(200, {"subnets": [{
                "id": SUBNET, "network_id": NETWORK, "ip_version": 4,
                "cidr": "192.0.2.0/24", "gateway_ip": "192.0.2.1", "enable_dhcp": True,
                "dns_nameservers": ["192.0.2.53"], "host_routes": [],
                "revision_number": 1}]})
        if path == "/networks":
            return _Response(200, {"networks": [{"id": NETWORK, "mtu": 1450,
                                                 "revision_number": 1}]})
        return _Response(404, {"NeutronError": {"message": f"no {path}"}})

    def put(self, service: str, path: str, body: Any) -> _Response:
        pid = path.split("/")[2]
        with self.lock:
            self.tags[pid] = list(body["tags"])
            self.revisions[pid] = self.revisions.get(pid, 1) + 1
        return _Response(200, body)


def request(instance: str | None = None, image: str = INJECT_IMAGE,
            hostname: str | None = "vm1") -> dict[str, Any]:
    """nova's POST body."""
    return {"project-id": "p", "instance-id": instance or str(uuid.uuid4()),
            "image-id": image, "user-data": None, "hostname": hostname, "metadata": {},
            "boot-roles": "member"}


# -- in process ------------------------------------------------------------------------------


def wsgi_call(app: Any, method: str = "POST", path: str = "/", body: bytes = b"",
              headers: dict[str, str] | None = None, content_length: str | None = None,
              content_type: str | None = "application/json",
              extra: dict[str, Any] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request through a WSGI app, in process: (status, headers, body).
    ``content_length``: the CONTENT_LENGTH to claim (default: the body's length);
    ``extra``: more environ keys."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "9977", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length,
        **(extra or {}),
    }
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    got: dict[str, Any] = {}

    def start(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"] = int(status.split(" ", 1)[0])
        got["headers"] = dict(hdrs)
        return lambda _data: None

    out = b"".join(app(environ, start))
    return got["status"], got["headers"], out


class Captured(logging.Handler):
    """The netinject log records while installed (``with Captured() as log``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)

    def tracebacks(self) -> list[str]:
        return [self.format(r)[:300] for r in self.records
                if r.exc_info or "Traceback" in r.getMessage()]

    def __enter__(self) -> Captured:
        logger = logging.getLogger("netinject")
        self._level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        logger = logging.getLogger("netinject")
        logger.removeHandler(self)
        logger.setLevel(self._level)


# -- the real server ---------------------------------------------------------------------------


def fake_clouds_yaml(tmp: Path) -> Path:
    """A clouds.yaml whose entry ``fake`` points at a closed loopback port for Keystone:
    the service starts (with or without auth), its health check answers, and every
    call that needs the cloud fails at once."""
    path = tmp / "fake-clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": {FAKE_CLOUD: {
        "auth": {"auth_url": f"http://127.0.0.1:{free_port()}/v3", "username": "netinject",
                 "password": "secret", "project_name": "service",
                 "user_domain_name": "Default", "project_domain_name": "Default"},
        "region_name": "RegionOne"}}}))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def serve(tmp: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """``netinject vendordata serve --cloud fake`` (real gunicorn) on loopback: (url,
    log)."""
    log = tmp / f"serve-{uuid.uuid4().hex[:8]}.log"
    with running_service(log, FAKE_CLOUD, extra=args,
                         clouds_yaml=fake_clouds_yaml(tmp)) as url:
        yield url, log


def address(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return host, int(port)


@contextlib.contextmanager
def slow_clients(url: str, count: int = 16, interval: float = 0.5) -> Iterator[dict[str, int]]:
    """``count`` connections that each send one byte every ``interval`` seconds, while the
    block runs: half trickle their request headers (slowloris), half send whole headers
    and trickle a 64 KiB body (slow POST). A connection the server closes is opened
    again, as an attacker would. Yields counters (connections opened, bytes sent)."""
    host, port = address(url)
    head = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 65536\r\n\r\n")
    stop = threading.Event()
    stats = {"opened": 0, "sent": 0}

    def opened(n: int) -> tuple[socket.socket, bytes] | None:
        try:
            s = socket.create_connection((host, port), timeout=2)
        except OSError:
            return None
        stats["opened"] += 1
        # Odd ones: the whole head at once, then the body byte by byte.
        if n % 2:
            try:
                s.sendall(head)
            except OSError:
                s.close()
                return None
            return s, b"{" * 65536
        return s, head + b"x" * 65536

    def run() -> None:
        conns: list[tuple[socket.socket, bytes] | None] = [opened(n) for n in range(count)]
        while not stop.wait(interval):
            for n, item in enumerate(conns):
                if item is None:
                    conns[n] = opened(n)
                    continue
                sock, rest = item
                try:
                    sock.send(rest[:1])
                    stats["sent"] += 1
                    conns[n] = (sock, rest[1:])
                except OSError:
                    sock.close()
                    conns[n] = opened(n)
        for item in conns:
            if item is not None:
                item[0].close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        time.sleep(interval * 2)  # every connection is in, and has sent a byte or two
        yield stats
    finally:
        stop.set()
        thread.join(10)
