"""A metadata proxy that signs requests for nova's metadata API as Neutron's agent does.

On a stock cloud a guest's ``GET http://169.254.169.254/...`` reaches haproxy in the
network's (or router's) namespace, which adds ``X-Neutron-Network-ID`` (or
``-Router-ID``) and hands it to ``neutron-metadata-agent`` on a unix socket. The agent
(``neutron/agent/metadata/agent.py``, ``MetadataProxyHandler``) finds the one port with the
guest's address on that network, then ``_proxy_request`` sends nova the same method, path,
query and body with exactly these headers:

- ``X-Forwarded-For``: the guest's address (from haproxy),
- ``X-Instance-ID``: the port's ``device_id``; ``X-Tenant-ID``: the port's ``tenant_id``,
- ``X-Instance-ID-Signature``: ``_sign_instance_id``, the hex HMAC-SHA256 of the
  instance id (UTF-8) keyed with ``metadata_proxy_shared_secret`` (UTF-8).

nova (``nova/api/metadata/handler.py``, ``MetadataRequestHandler._handle_instance_id_request``
and ``_validate_shared_secret``, with ``[neutron] service_metadata_proxy = true``) checks the
signature the same way (403 if it differs) and 404s when ``X-Tenant-ID`` is not the
instance's project. The agent passes a 200 on with its body and content type, answers
403, 400, 404, 409 and 500 with the same status (its own body), and anything else as a 500.

Why not Neutron's own agent: ``neutron-metadata-agent`` is in the peer's chroot, but it
cannot serve here. It resolves the guest's address to a port only over RPC
(``MetadataPluginAPI.get_ports``, oslo.messaging topic ``q-plugin``) to neutron-server,
and the peer's neutron-server runs with ``transport_url = fake:/`` (an in-process
driver; there is no message broker in the chroot), and it listens only on a unix socket
fed by haproxy in a namespace that a DHCP or L3 agent spawns, none of which run here. So
this proxy stands in for haproxy + agent, with the binding a namespace gives fixed per
proxy: one proxy per guest (``Binding``), as one haproxy per network.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import http.server
import os
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Statuses the agent passes on as they are; any other becomes a 500 (agent.py).
PASSED_ON = {200, 400, 403, 404, 409, 500}


def sign_instance_id(secret: str, instance_id: str) -> str:
    """The X-Instance-ID-Signature Neutron's agent sends and nova checks."""
    return hmac.new(secret.encode(), instance_id.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Binding:
    """Who is asking, as the agent learns it from Neutron: the guest's port's
    ``device_id`` (instance), ``tenant_id`` (project) and the guest's address."""

    instance_id: str
    tenant_id: str
    address: str


def signed_headers(binding: Binding, secret: str) -> dict[str, str]:
    return {"X-Forwarded-For": binding.address,
            "X-Instance-ID": binding.instance_id,
            "X-Tenant-ID": binding.tenant_id,
            "X-Instance-ID-Signature": sign_instance_id(secret, binding.instance_id)}


def forward(nova_url: str, secret: str, binding: Binding, method: str, target: str,
            body: bytes, timeout: float = 60) -> tuple[int, str, bytes]:
    """One request as the agent sends it to nova: (status, content type, body) as the
    agent answers the guest."""
    url = urllib.parse.urlsplit(nova_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80,
                                      timeout=timeout)
    try:
        conn.request(method, target, body=body or None,
                     headers=signed_headers(binding, secret))
        resp = conn.getresponse()
        data = resp.read()
        ctype = resp.getheader("Content-Type") or "text/plain"
    finally:
        conn.close()
    if resp.status == 200:
        return 200, ctype, data
    status = resp.status if resp.status in PASSED_ON else 500
    return status, "text/plain; charset=UTF-8", f"{status} {resp.reason}\n".encode()


CLONE_NEWNET = 0x40000000  # <sched.h>


def _setns(fd: int) -> None:
    """This thread into the network namespace ``fd`` (os.setns is Python 3.12+)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listener_in_netns(netns: str, address: tuple[str, int]) -> socket.socket:
    """A TCP socket bound to ``address`` inside the network namespace ``netns`` (``ip
    netns add``: /run/netns/NAME), made by this thread stepping into the namespace and
    back. A socket stays in the namespace it was made in, so the proxy answers the
    guest's side there while its connections to nova are made in this one (on its
    loopback)."""
    with open(f"/run/netns/{netns}", "rb") as target, \
            open("/proc/thread-self/ns/net", "rb") as home:
        _setns(target.fileno())
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
            except OSError:
                sock.close()
                raise
        finally:
            _setns(home.fileno())
    return sock


@contextlib.contextmanager
def metadata_proxy(nova_url: str, secret: str, binding: Binding,
                   listen: tuple[str, int] = ("127.0.0.1", 0),
                   netns: str | None = None) -> Iterator[str]:
    """The proxy on ``listen`` until the block ends; yields its URL (the guest's
    ``http://169.254.169.254``). With ``netns``, ``listen`` is an address in that network
    namespace (listener_in_netns): a guest on a link of the namespace reaches it there,
    as at a cloud's 169.254.169.254. nova unreachable: 500, as the agent's catch-all."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                status, ctype, data = forward(nova_url, secret, binding, self.command,
                                              self.path, body)
            except (OSError, http.client.HTTPException):
                status, ctype, data = 500, "text/plain", b"500 Internal Server Error\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _any  # http.server's names

        def log_message(self, *args: Any) -> None:
            pass

    if netns is None:
        server = http.server.ThreadingHTTPServer(listen, Handler)
    else:
        server = http.server.ThreadingHTTPServer(listen, Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = listener_in_netns(netns, listen)
        server.server_address = server.socket.getsockname()
        try:
            server.server_activate()
        except OSError:
            server.server_close()
            raise
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
