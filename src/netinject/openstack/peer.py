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
META_SCRIPT = Path(__file__).with_name("nova_metadata.py")
META_DBS = "nova-metadata"  # the state directory's nova databases for the metadata API
META_DB_VERSION = 1  # bump when nova_metadata.py's setup changes: the cached copy is keyed
# The metadata app of nova's etc/nova/api-paste.ini (Debian ships it in nova-common, which
# the peer does not install): what nova-metadata-wsgi loads under the name "metadata".
API_PASTE = """[composite:metadata]
use = egg:Paste#urlmap
/: meta

[pipeline:meta]
pipeline = cors http_proxy_to_wsgi metaapp

[app:metaapp]
paste.app_factory = nova.api.metadata.handler:MetadataRequestHandler.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = nova

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware.http_proxy_to_wsgi:HTTPProxyToWSGI.factory
"""
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
                  auth: bool = True, extra: dict[str, dict[str, str]] | None = None,
                  path: Path | None = None) -> Path:
        """A nova.conf (in the state directory, or at ``path``) with the vendordata
        settings docs/operator-guide.md gives; ``target``: the DynamicJSON URL (None:
        StaticJSON only); ``extra``: more options by section (they win)."""
        nova = self.cloud("nova")["auth"]
        creds = {"auth_type": "password", "auth_url": nova["auth_url"],
                 "username": nova["username"], "password": nova["password"],
                 "project_name": nova["project_name"], "user_domain_name": "Default",
                 "project_domain_name": "Default"}
        sections: dict[str, dict[str, str]] = {
            "DEFAULT": {"config_drive_format": "iso9660", "mkisofs_cmd": "genisoimage"},
            "database": {"connection": f"sqlite:///{IN_CHROOT}/nova.db"},
            "api": {"vendordata_providers":
                    "StaticJSON,DynamicJSON" if target else "StaticJSON",
                    **({"vendordata_dynamic_targets": f"netinject@{target}"}
                       if target else {}),
                    "vendordata_dynamic_connect_timeout": f"{connect_timeout:g}",
                    "vendordata_dynamic_read_timeout": f"{read_timeout:g}",
                    "vendordata_dynamic_failure_fatal": str(failure_fatal).lower()},
            **({"vendordata_dynamic_auth": dict(creds)} if auth else {}),
            "neutron": {**creds, "region_name": "RegionOne", "valid_interfaces": "public"},
        }
        for head, options in (extra or {}).items():
            sections.setdefault(head, {}).update(options)
        text = "".join(f"[{head}]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items())
                       for head, opts in sections.items())
        path = path or self.state / f"nova-{name}.conf"
        path.write_text(text)
        return path

    def in_chroot(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in the chroot, in a private mount namespace with /proc and the
        state directory at /srv/peer (as openstack-peer.sh exec does)."""
        return subprocess.run(_chrooted(self, args), text=True, check=False, **kwargs)

    def nova_metadata_dbs(self) -> Path:
        """nova's API, cell0 and cell1 databases for the metadata API (nova_metadata.py
        setup: nova-manage's migrations and cell mappings), made once per state
        directory, on first use. The fresh databases are cached next to the chroot (their
        paths inside the chroot never change), so a new peer copies them (~0.1 s)
        instead of migrating again (~6 s)."""
        import fcntl
        import sqlite3

        dbs = self.state / META_DBS
        names = [f"nova-{db}.db" for db in ("api", "cell0", "cell1")]
        cache = self.root.parent / f"{META_DBS}-{META_DB_VERSION}"
        with (self.state / f"{META_DBS}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (dbs / "ready").is_file():
                return dbs
            dbs.mkdir(exist_ok=True)
            if all((cache / n).is_file() for n in names):
                for n in names:
                    shutil.copyfile(cache / n, dbs / n)
            else:
                for n in names:
                    (dbs / n).unlink(missing_ok=True)
                conf = self._meta_base_conf(dbs)
                shutil.copyfile(META_SCRIPT, self.state / META_SCRIPT.name)
                done = self.in_chroot(
                    ["python3", "-W", "ignore", f"/srv/peer/{META_SCRIPT.name}", "setup",
                     self.chroot_path(conf.parent)], capture_output=True, timeout=300)
                if done.returncode != 0:
                    raise PeerError(f"nova's database setup failed: {done.stderr[-2000:]}")
                cache.mkdir(exist_ok=True)
                for n in names:
                    shutil.copyfile(dbs / n, cache / f"{n}.partial")
                    os.replace(cache / f"{n}.partial", cache / n)
            for n in names:  # as the peer's other databases: readers never lock writers
                with contextlib.closing(sqlite3.connect(dbs / n)) as db:
                    db.execute("PRAGMA journal_mode=WAL")
            (dbs / "ready").write_text("")
        return dbs

    def _meta_base_conf(self, dbs: Path) -> Path:
        inside = self.chroot_path(dbs)
        conf = dbs / "nova.conf"
        conf.write_text(
            "[DEFAULT]\ntransport_url = fake:/\nhost = netinject-peer\n"
            f"[database]\nconnection = sqlite:///{inside}/nova-cell1.db\n"
            f"[api_database]\nconnection = sqlite:///{inside}/nova-api.db\n")
        return conf

    def nova_metadata_conf(self, name: str, target: str | None, secret: str, *,
                           cache_expiration: int = 15, **vendordata: Any) -> Path:
        """A directory with the nova.conf and api-paste.ini of one nova metadata API:
        ``nova_conf``'s vendordata settings (``target``, ``vendordata``), behind
        Neutron's metadata proxy (``[neutron] service_metadata_proxy``, ``secret``),
        ``[api] metadata_cache_expiration`` (nova's default 15 s), on the shared
        databases (nova_metadata_dbs)."""
        dbs = self.nova_metadata_dbs()
        inside = self.chroot_path(dbs)
        directory = self.state / f"nova-metadata-{name}"
        directory.mkdir(exist_ok=True)
        (directory / "api-paste.ini").write_text(API_PASTE)
        self.nova_conf(name, target, path=directory / "nova.conf", extra={
            "DEFAULT": {"transport_url": "fake:/", "host": "netinject-peer",
                        "log_file": f"{self.chroot_path(directory)}/nova.log"},
            "database": {"connection": f"sqlite:///{inside}/nova-cell1.db"},
            "api_database": {"connection": f"sqlite:///{inside}/nova-api.db"},
            "api": {"metadata_cache_expiration": str(cache_expiration)},
            "neutron": {"service_metadata_proxy": "true",
                        "metadata_proxy_shared_secret": secret},
            "oslo_concurrency": {"lock_path": f"{IN_CHROOT}/lock"},
        }, **vendordata)
        return directory

    def _meta_run(self, command: str, conf_dir: Path, req: dict[str, Any]) -> Any:
        shutil.copyfile(META_SCRIPT, self.state / META_SCRIPT.name)
        done = self.in_chroot(
            ["python3", "-W", "ignore", f"/srv/peer/{META_SCRIPT.name}", command,
             self.chroot_path(conf_dir)], input=json.dumps(req), capture_output=True,
            timeout=300)
        if done.returncode != 0:
            raise PeerError(f"nova_metadata.py {command} failed (exit {done.returncode}): "
                            f"{done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout)

    def nova_instance(self, conf_dir: Path, instance: str, project: str, user: str,
                      image: str, hostname: str, ports: list[str]) -> list[str]:
        """A real instance in nova's database (nova_metadata.py create): its info cache
        built by nova from Neutron with ``ports`` in this order; returns its VIF ids."""
        out = self._meta_run("create", conf_dir, {
            "instance": instance, "project": project, "user": user, "image": image,
            "hostname": hostname, "ports": ports})
        vifs: list[str] = out["vifs"]
        return vifs

    def nova_attach(self, conf_dir: Path, instance: str, ports: list[str]) -> list[str]:
        """The instance's info cache gets ``ports`` as nova's attach_interface adds them
        (nova_metadata.py attach); returns the cache's VIF ids."""
        vifs: list[str] = self._meta_run("attach", conf_dir, {
            "instance": instance, "ports": ports})["vifs"]
        return vifs

    def nova_detach(self, conf_dir: Path, instance: str, port: str) -> list[str]:
        """``port`` leaves the instance as nova's detach_interface lets it go, after the
        hypervisor's detach (nova_metadata.py detach: deallocate_port_for_instance
        unbinds it in Neutron and saves the info cache); returns the cache's VIF ids."""
        vifs: list[str] = self._meta_run("detach", conf_dir, {
            "instance": instance, "port": port})["vifs"]
        return vifs

    def build_drives(self, conf: Path, builds: list[dict[str, Any]], repeat: int = 1,
                     timeout: float = 600) -> list[dict[str, Any]]:
        """Run nova's metadata and config-drive code for each build (see nova_drive.py):
        ``out`` paths are host paths inside the state directory."""
        shutil.copyfile(NOVA_SCRIPT, self.state / NOVA_SCRIPT.name)
        req = {"conf": self.chroot_path(conf), "repeat": repeat,
               "builds": [{**b, "out": self.chroot_path(Path(b["out"])) if b.get("out")
                           else None} for b in builds]}
        done = self.in_chroot(["python3", "-W", "ignore", "/srv/peer/nova_drive.py"],
                              input=json.dumps(req), capture_output=True, timeout=timeout)
        if done.returncode != 0:
            raise PeerError(f"nova's drive build failed (exit {done.returncode}): "
                            f"{done.stderr.strip()[-2000:]}")
        try:
            results: list[dict[str, Any]] = json.loads(done.stdout)["builds"]
        except (ValueError, KeyError):
            raise PeerError(f"nova's drive build said: {done.stdout[-500:]!r} "
                            f"{done.stderr[-2000:]}") from None
        return results


def _chrooted(peer: Peer, args: list[str]) -> list[str]:
    """The command line running ``args`` in the peer's chroot (see Peer.in_chroot)."""
    script = ('r=$1 st=$2; shift 2; mount -t proc proc "$r/proc" && '
              'mount --bind "$st" "$r/srv/peer" && exec chroot "$r" "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            script, "sh", str(peer.root), str(peer.state), *args]


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
def stand_in(status: int = 200, body: bytes = b"{}", delay: float = 0.0,
             arrivals: list[tuple[float, str]] | None = None) -> Iterator[str]:
    """A STAND-IN vendordata target (not netinject's service) on a free loopback port:
    answers every POST with ``status`` and ``body`` after ``delay`` seconds; yields its
    URL. For nova's own cost and its handling of a broken or slow target. With
    ``arrivals``, each POST appends (``time.monotonic()`` when it was read, the
    instance-id nova sent): when nova calls, for how a drive's calls are spaced."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes

        def do_POST(self) -> None:  # http.server's name
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if arrivals is not None:
                try:
                    iid = str(json.loads(raw).get("instance-id"))
                except (ValueError, AttributeError):
                    iid = "?"
                arrivals.append((time.monotonic(), iid))
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
def nova_metadata_api(peer: Peer, conf_dir: Path, timeout: float = 120) -> Iterator[str]:
    """nova's metadata API (its WSGI app, nova_metadata.py) under uwsgi (Debian's, in
    the chroot) on a free loopback port, until the block ends; yields its URL. One
    process, one thread: nova's per-instance metadata cache is that process's (the
    ``oslo_cache.dict`` backend when ``[cache] enabled`` is off), so every read sees
    the same cache. Its log: ``conf_dir/uwsgi.log`` and ``conf_dir/nova.log``."""
    import signal

    import requests

    port = free_port()
    shutil.copyfile(META_SCRIPT, peer.state / META_SCRIPT.name)
    log = conf_dir / "uwsgi.log"
    with log.open("w") as out:
        proc = subprocess.Popen(_chrooted(peer, [
            "uwsgi", "--plugin", "python3", "--http-socket", f"127.0.0.1:{port}",
            "--wsgi-file", f"/srv/peer/{META_SCRIPT.name}", "--master", "--processes", "1",
            "--die-on-term", "--need-app",
            "--env", f"OS_NOVA_CONFIG_DIR={peer.chroot_path(conf_dir)}"]),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PeerError(f"nova's metadata API did not start: "
                                f"{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
