"""The OpenStack path's test bed: the local peer (real Keystone, Neutron, Glance and nova's
own code, scripts/openstack-peer.sh), the real vendordata service as a process, and the
two stand-ins the failure matrix needs where no real peer misbehaves on demand (a target
answering HTTP 500, a target slower than nova's timeout), each said so where used.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from netinject.openstack.peer import Peer, running_service

REPO = Path(__file__).resolve().parents[2]
PEER_SCRIPT = REPO / "scripts/openstack-peer.sh"
NETINJECT = Path(sys.executable).with_name("netinject")


@contextlib.contextmanager
def peer_running() -> Iterator[Peer]:
    """The peer: started for the session unless one already runs (then left running)."""
    status = subprocess.run(["bash", str(PEER_SCRIPT), "status"], capture_output=True,
                            text=True, check=False)
    started = status.returncode != 0
    if started:
        subprocess.run(["bash", str(PEER_SCRIPT), "start"], check=True, timeout=900,
                       stdout=subprocess.DEVNULL)
    peer = Peer.find()
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(peer.clouds_yaml)
    try:
        yield peer
    finally:
        if started:
            subprocess.run(["bash", str(PEER_SCRIPT), "stop"], check=False)


def connect(name: str) -> Any:
    import openstack

    return openstack.connect(cloud=name)


@dataclass
class Service:
    """``netinject vendordata serve`` as a process (real gunicorn) and its log."""

    url: str
    log: Path

    def text(self) -> str:
        return self.log.read_text()

    def built(self) -> int:
        return self.text().count(": built in ")

    def posts(self) -> int:
        return self.text().count('"POST / HTTP')


@contextlib.contextmanager
def service(tmp: Path, cloud: str = "netinject", *args: str,
            clouds_yaml: Path | None = None) -> Iterator[Service]:
    log = tmp / f"service-{uuid.uuid4().hex[:8]}.log"
    with running_service(log, cloud, extra=args, clouds_yaml=clouds_yaml) as url:
        yield Service(url, log)


@contextlib.contextmanager
def stand_in(status: int = 500, delay: float = 0.0) -> Iterator[str]:
    """A STAND-IN target (not netinject's service): answers every POST with ``status``
    after ``delay`` seconds. For nova's handling of a broken or slow target only."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(delay)
            body = b'{"error": "stand-in"}'
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # nova gave up first

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def slow_proxy(target_port: int, delay: float) -> Iterator[int]:
    """A TCP proxy on loopback that holds each connection ``delay`` seconds before
    passing it to ``target_port``: a real Neutron, made slow."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def serve(client: socket.socket) -> None:
        time.sleep(delay)
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            return
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        pipe(upstream, client)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def clouds_with(peer: Peer, tmp: Path, name: str = "netinject", **extra: Any) -> Path:
    """A clouds.yaml with the peer's entry ``name`` plus ``extra`` settings (e.g. a
    network_endpoint_override)."""
    data = yaml.safe_load(peer.clouds_yaml.read_text())
    data["clouds"][name].update(extra)
    path = tmp / "clouds.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


@dataclass
class Tenant:
    """Networks, subnets, ports and images made in the real services for one test."""

    demo: Any
    admin: Any
    project_id: str
    made: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def open(cls) -> Tenant:
        demo = connect("demo")
        return cls(demo, connect("netinject-admin"), demo.current_project_id)

    def network(self, name: str, mtu: int | None = None) -> Any:
        net = self.demo.network.create_network(name=name, **({"mtu": mtu} if mtu else {}))
        self.made.append(("network", net.id))
        return net

    def subnet(self, net: Any, **kwargs: Any) -> Any:
        return self.demo.network.create_subnet(network_id=net.id, **kwargs)

    def port(self, net: Any, instance: str, mac: str, ips: list[dict[str, str]]) -> Any:
        port = self.demo.network.create_port(
            network_id=net.id, device_id=instance, device_owner="compute:nova",
            mac_address=mac, fixed_ips=ips)
        self.made.append(("port", port.id))
        return port

    def image(self, inject: bool) -> Any:
        props = {"support_inject_ip": "true"} if inject else {}
        image = self.demo.image.create_image(
            name=f"img-{uuid.uuid4().hex[:6]}", disk_format="qcow2",
            container_format="bare", **props)
        self.made.append(("image", image.id))
        return image

    def tags(self, port_id: str) -> list[str]:
        return sorted(self.admin.network.get_port(port_id).tags)

    def close(self) -> None:
        for kind, ident in reversed(self.made):
            with contextlib.suppress(Exception):
                if kind == "port":
                    self.admin.network.delete_port(ident)
                elif kind == "network":
                    self.admin.network.delete_network(ident)
                else:
                    self.admin.image.delete_image(ident)


def vendor_json(drive: Path) -> dict[str, Any]:
    """openstack/latest/vendor_data2.json off a drive nova built (iso9660)."""
    from helpers.drive import iso_files

    data: dict[str, Any] = json.loads(iso_files(drive)["openstack/latest/vendor_data2.json"])
    return data
