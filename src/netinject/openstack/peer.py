"""The local OpenStack peer (scripts/openstack-peer.sh), as tests and benchmarks use it:
its clouds.yaml, a nova.conf for nova's own vendordata and config-drive code, and runs
of that code (openstack/nova_drive.py) in the peer's chroot.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NetinjectError

DEFAULT_STATE = Path("/run/netinject-openstack-peer")
NOVA_SCRIPT = Path(__file__).with_name("nova_drive.py")
IN_CHROOT = Path("/srv/peer")  # where the state directory is in the chroot


class PeerError(NetinjectError):
    pass


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Peer:
    state: Path
    root: Path

    @classmethod
    def find(cls, state: Path | None = None) -> Peer:
        """The running peer (PeerError naming the command that starts one)."""
        state = state or Path(os.environ.get("NETINJECT_PEER_DIR") or DEFAULT_STATE)
        root_file, clouds = state / "root", state / "clouds.yaml"
        # stop removes the services' pid files; root and clouds.yaml stay behind.
        pids = [state / f"{s}.pid" for s in ("keystone", "neutron", "glance")]
        if not root_file.is_file() or not clouds.is_file() or not all(
                p.is_file() for p in pids):
            raise PeerError(f"no OpenStack peer in {state}: run "
                            "'scripts/openstack-peer.sh start' (as root)")
        return cls(state, Path(root_file.read_text().strip()))

    @property
    def clouds_yaml(self) -> Path:
        return self.state / "clouds.yaml"

    def cloud(self, name: str) -> dict[str, Any]:
        """A clouds.yaml entry (the peer writes plain YAML; openstacksdk reads it)."""
        import yaml

        data = yaml.safe_load(self.clouds_yaml.read_text())
        entry: dict[str, Any] = data["clouds"][name]
        return entry

    def chroot_path(self, host: Path) -> str:
        return str(IN_CHROOT / host.relative_to(self.state))

    def nova_conf(self, name: str, target: str | None, *, failure_fatal: bool = False,
                  connect_timeout: float = 5, read_timeout: float = 5,
                  auth: bool = True) -> Path:
        """A nova.conf (in the state directory) with the vendordata settings
        docs/operator-guide.md gives; ``target``: the DynamicJSON URL (None: StaticJSON
        only)."""
        nova = self.cloud("nova")["auth"]

        def section(head: str) -> str:
            return (f"[{head}]\nauth_type = password\nauth_url = {nova['auth_url']}\n"
                    f"username = {nova['username']}\npassword = {nova['password']}\n"
                    f"project_name = {nova['project_name']}\n"
                    "user_domain_name = Default\nproject_domain_name = Default\n")
        providers = "StaticJSON,DynamicJSON" if target else "StaticJSON"
        text = (
            "[DEFAULT]\nconfig_drive_format = iso9660\nmkisofs_cmd = genisoimage\n"
            f"[database]\nconnection = sqlite:///{IN_CHROOT}/nova.db\n"
            f"[api]\nvendordata_providers = {providers}\n"
            + (f"vendordata_dynamic_targets = netinject@{target}\n" if target else "")
            + f"vendordata_dynamic_connect_timeout = {connect_timeout:g}\n"
            f"vendordata_dynamic_read_timeout = {read_timeout:g}\n"
            f"vendordata_dynamic_failure_fatal = {str(failure_fatal).lower()}\n"
            + (section("vendordata_dynamic_auth") if auth else "")
            + section("neutron") + "region_name = RegionOne\nvalid_interfaces = public\n")
        path = self.state / f"nova-{name}.conf"
        path.write_text(text)
        return path

    def build_drives(self, conf: Path, builds: list[dict[str, Any]], repeat: int = 1,
                     timeout: float = 600) -> list[dict[str, Any]]:
        """Run nova's metadata and config-drive code for each build (see nova_drive.py):
        ``out`` paths are host paths inside the state directory."""
        shutil.copyfile(NOVA_SCRIPT, self.state / NOVA_SCRIPT.name)
        req = {"conf": self.chroot_path(conf), "repeat": repeat,
               "builds": [{**b, "out": self.chroot_path(Path(b["out"])) if b.get("out")
                           else None} for b in builds]}
        script = ('mount -t proc proc "$1/proc" && mount --bind "$2" "$1/srv/peer" && '
                  'exec chroot "$1" python3 -W ignore /srv/peer/nova_drive.py')
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
             script, "sh", str(self.root), str(self.state)],
            input=json.dumps(req), capture_output=True, text=True, timeout=timeout,
            check=False)
        if done.returncode != 0:
            raise PeerError(f"nova's drive build failed (exit {done.returncode}): "
                            f"{done.stderr.strip()[-2000:]}")
        try:
            results: list[dict[str, Any]] = json.loads(done.stdout)["builds"]
        except (ValueError, KeyError):
            raise PeerError(f"nova's drive build said: {done.stdout[-500:]!r} "
                            f"{done.stderr[-2000:]}") from None
        return results


def wait_healthy(url: str, proc: subprocess.Popen[Any], log: Path,
                 timeout: float = 60) -> None:
    """Until the service at ``url`` answers its health check (PeerError, with the end of
    its log, if its process ends or ``timeout`` passes first)."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url + "healthcheck", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise PeerError(f"the service did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


@contextlib.contextmanager
def stand_in(status: int = 200, body: bytes = b"{}", delay: float = 0.0) -> Iterator[str]:
    """A STAND-IN vendordata target (not netinject's service) on a free loopback port:
    answers every POST with ``status`` and ``body`` after ``delay`` seconds; yields its
    URL. For nova's own cost and its handling of a broken or slow target."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes

        def do_POST(self) -> None:  # http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(delay)
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
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def running_service(log: Path, cloud: str = "netinject", workers: int = 1, threads: int = 8,
                    extra: tuple[str, ...] = (), clouds_yaml: Path | None = None
                    ) -> Iterator[str]:
    """``netinject vendordata serve`` (real gunicorn) on a free loopback port, until the
    block ends; yields its URL. Its log (access and service lines) goes to ``log``;
    ``clouds_yaml`` replaces OS_CLIENT_CONFIG_FILE for it."""
    port = free_port()
    exe = Path(sys.executable).with_name("netinject")
    env = dict(os.environ)
    if clouds_yaml is not None:
        env["OS_CLIENT_CONFIG_FILE"] = str(clouds_yaml)
    with log.open("w") as out:
        proc = subprocess.Popen([str(exe), "vendordata", "serve", "--cloud", cloud,
                                 "--listen", f"127.0.0.1:{port}", "--workers", str(workers),
                                 "--threads", str(threads), *extra],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Tenant:
    """Networks, subnets, ports and images made in the peer's real services as its tenant
    ``demo`` (deleted again, as admin, by ``close``): for tests and the test bed."""

    demo: Any
    admin: Any
    project_id: str
    made: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def open(cls) -> Tenant:
        import openstack

        demo = openstack.connect(cloud="demo")
        return cls(demo, openstack.connect(cloud="netinject-admin", api_timeout=60),
                   str(demo.current_project_id))

    def network(self, name: str, mtu: int | None = None) -> Any:
        net = self.demo.network.create_network(name=name, **({"mtu": mtu} if mtu else {}))
        self.made.append(("network", net.id))
        return net

    def subnet(self, net: Any, **kwargs: Any) -> Any:
        return self.demo.network.create_subnet(network_id=net.id, **kwargs)

    def port(self, net: Any, instance: str, mac: str | None = None,
             ips: list[dict[str, str]] | None = None) -> Any:
        """A port bound to ``instance`` as nova binds it (Neutron picks what is None)."""
        given: dict[str, Any] = {"mac_address": mac} if mac else {}
        if ips is not None:
            given["fixed_ips"] = ips
        port = self.demo.network.create_port(
            network_id=net.id, device_id=instance, device_owner="compute:nova", **given)
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
        """Delete what was made: ports first, then networks, then images, one at a time
        (the peer's Neutron runs on SQLite under eventlet: concurrent deletes of bound
        ports can lock it up); what is already gone is no error."""
        for kind in ("port", "network", "image"):
            for ident in [i for k, i in self.made if k == kind]:
                with contextlib.suppress(Exception):
                    if kind == "port":
                        self.admin.network.delete_port(ident)
                    elif kind == "network":
                        self.admin.network.delete_network(ident)
                    else:
                        self.admin.image.delete_image(ident)
