"""The OpenStack path's test bed: the local peer (real Keystone, Neutron, Glance and nova's
own code, scripts/openstack-peer.sh), the real vendordata service as a process, and the
two stand-ins the failure matrix needs where no real peer misbehaves on demand (a target
answering HTTP 500, a target slower than nova's timeout: peer.stand_in, re-exported
here), each said so where used.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from netinject.openstack.peer import Peer, running_service
from netinject.openstack.peer import stand_in as stand_in

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

    def posts(self, at_least: int = 0, settle: float = 5.0) -> int:
        """The POSTs in the service's access log. ``at_least``: wait (up to ``settle``
        s) until that many are there: gunicorn writes a request's access line after the
        response, so a caller that has its answer can read the log before it (seen in a
        fresh-machine run: 0 read, the build line already there)."""
        deadline = time.monotonic() + settle
        while True:
            n = self.text().count('"POST / HTTP')
            if n >= at_least or time.monotonic() > deadline:
                return n
            time.sleep(0.05)


@contextlib.contextmanager
def service(tmp: Path, cloud: str = "netinject", *args: str,
            clouds_yaml: Path | None = None) -> Iterator[Service]:
    log = tmp / f"service-{uuid.uuid4().hex[:8]}.log"
    with running_service(log, cloud, extra=args, clouds_yaml=clouds_yaml) as url:
        yield Service(url, log)


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


def vendor_json(drive: Path) -> dict[str, Any]:
    """openstack/latest/vendor_data2.json off a drive nova built (iso9660)."""
    from helpers.drive import iso_files

    data: dict[str, Any] = json.loads(iso_files(drive)["openstack/latest/vendor_data2.json"])
    return data
