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
from collections.abc import Iterator
from dataclasses import dataclass
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
        if not root_file.is_file() or not clouds.is_file():
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
        """A nova.conf (in the state directory) with the vendordata settings the README's
        operator guide gives; ``target``: the DynamicJSON URL (None: StaticJSON only)."""
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
