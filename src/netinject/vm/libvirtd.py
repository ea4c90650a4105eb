"""A private, bounded libvirtd for the test bed: its own config, socket, state and log.

The system libvirtd (``qemu:///system``) depends on how the machine was set up: its
config in /etc/libvirt, a running virtlogd, cgroups, D-Bus and systemd-machined where
there are any, and a capability probe of every installed QEMU binary, with KVM first
when /dev/kvm exists. On a machine without systemd or D-Bus, where /dev/kvm is there but
KVM cannot run a guest (these CI machines), that made a first ``virsh create`` take 40-60
s or more, with no message saying why. The test bed needs none of it: it runs TCG guests
on files it made itself.

So :class:`PrivateLibvirtd` runs ``libvirtd`` in a mount namespace of its own
(``unshare --mount``) where

* /etc/libvirt is this run's directory: ``libvirtd.conf`` (socket in that directory,
  no auth on the root-only unix socket, log to a file there) and ``qemu.conf`` (QEMU
  as root on files the test made: no DAC relabelling, no private /dev, no cgroups, QEMU's
  output to a plain file instead of virtlogd);
* /run/libvirt and /var/lib/libvirt are empty tmpfs (no state shared with a system
  daemon, none left behind), /var/log/libvirt is this run's ``log/`` (each domain's QEMU
  log lands there), /var/cache/libvirt is a cache directory of netinject's (libvirt's
  capability cache, so later runs skip the probe);
* /dev/kvm is /dev/null: libvirt's probe finds no usable KVM and probes TCG only, which is
  all the test bed's ``<domain type='qemu'>`` guests use;
* only libvirt's QEMU connection driver is loaded (``LIBVIRT_DRIVER_DIR``): no network,
  nwfilter, storage or node-device driver probing firewalls and udev at start.

Every step has a deadline, and a step that fails raises :class:`LibvirtdError` with the
tail of libvirtd's own log (and the domain's QEMU log). Stopping destroys every domain,
then kills every process left in the daemon's mount namespace (QEMU included), so no
domain or daemon outlives the context.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ..errors import NetinjectError
from .cache import cache_dir

START_TIMEOUT = 60.0
CALL_TIMEOUT = 30.0
CREATE_TIMEOUT = 120.0
DRIVER_GLOBS = ("/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so",
                "/usr/lib64/libvirt/connection-driver/libvirt_driver_qemu.so",
                "/usr/lib/libvirt/connection-driver/libvirt_driver_qemu.so")
LIBVIRTD = "/usr/sbin/libvirtd"
LOG_TAIL = 40

# Runs as the namespace's first process: private mounts, then exec libvirtd in place.
_START = """\
set -eu
run=$1; cache=$2
for d in /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt /etc/libvirt; do
  mkdir -p "$d"
done
mount -t tmpfs -o mode=0755 netinject-libvirtd /run/libvirt
mount -t tmpfs -o mode=0755 netinject-libvirtd /var/lib/libvirt
mount --bind "$run/log" /var/log/libvirt
mount --bind "$cache" /var/cache/libvirt
mount --bind "$run/etc" /etc/libvirt
if [ -e /dev/kvm ]; then mount --bind /dev/null /dev/kvm; fi
exec {libvirtd} -f "$run/etc/libvirtd.conf" -p "$run/libvirtd.pid"
"""

LIBVIRTD_CONF = """\
# netinject's private test-bed libvirtd (netinject.vm.libvirtd)
unix_sock_dir = "{sock}"
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:{log}"
"""

QEMU_CONF = """\
# netinject's private test-bed libvirtd: TCG guests on files the test made, as root.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
"""


class LibvirtdError(NetinjectError):
    """The private libvirtd did not start, answer or do what it was asked."""


class LibvirtdTimeout(LibvirtdError):
    """The private libvirtd did not answer in time."""


def qemu_driver() -> Path:
    """libvirt's QEMU connection driver (Debian: libvirt-daemon-driver-qemu)."""
    for pattern in DRIVER_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    raise LibvirtdError("libvirt's QEMU driver (libvirt_driver_qemu.so) is not installed: "
                        "run scripts/setup.sh")


def _tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path}: not written)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path}: empty)"


class PrivateLibvirtd:
    """``with PrivateLibvirtd() as lv:`` a libvirtd for this run only; ``lv.uri`` to
    connect (libvirt-python, virsh), ``lv.create(xml)`` to start a domain."""

    def __init__(self, start_timeout: float = START_TIMEOUT,
                 cache: Path | None = None) -> None:
        self.start_timeout = start_timeout
        self.cache = (cache or cache_dir()) / "libvirt"
        self.dir = Path(tempfile.mkdtemp(prefix="netinject-libvirtd-"))
        self.sock = self.dir / "run" / "libvirt-sock"
        self.log = self.dir / "log" / "libvirtd.log"
        self.uri = f"qemu:///system?socket={self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mntns: str | None = None

    # -- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> PrivateLibvirtd:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if not os.access(LIBVIRTD, os.X_OK):
            raise LibvirtdError(f"{LIBVIRTD} is not installed: run scripts/setup.sh")
        driver = qemu_driver()
        for sub in ("etc", "run", "log", "drivers"):
            (self.dir / sub).mkdir(mode=0o700)
        self.cache.mkdir(parents=True, exist_ok=True)
        (self.dir / "drivers" / driver.name).symlink_to(driver)
        (self.dir / "etc" / "libvirtd.conf").write_text(
            LIBVIRTD_CONF.format(sock=self.sock.parent, log=self.log))
        (self.dir / "etc" / "qemu.conf").write_text(QEMU_CONF)
        out = (self.dir / "daemon.out").open("wb")
        env = {**os.environ, "LIBVIRT_DRIVER_DIR": str(self.dir / "drivers")}
        with out:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 _START.format(libvirtd=LIBVIRTD), "netinject-libvirtd", str(self.dir),
                 str(self.cache)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise LibvirtdError(self._why(
                    f"libvirtd exited with status {self.proc.returncode} while starting"))
            if self.mntns is None:
                with contextlib.suppress(OSError):
                    ns = os.readlink(f"/proc/{self.proc.pid}/ns/mnt")
                    if ns != os.readlink("/proc/self/ns/mnt"):
                        self.mntns = ns
            if self.sock.exists() and self._answers():
                break
            if time.monotonic() > deadline:
                raise LibvirtdTimeout(self._why(
                    f"libvirtd did not answer on {self.sock} within "
                    f"{self.start_timeout:.0f} s"))
            time.sleep(0.2)
        self.started_in = time.monotonic() - t0

    def _answers(self) -> bool:
        try:
            done = subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True,
                                  timeout=10, check=False)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def stop(self) -> None:
        """Destroy every domain, stop the daemon and kill whatever is left in its mount
        namespace; then remove the run's directory. Safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(LibvirtdError):
                names = self.virsh("list", "--name", timeout=10).stdout.split()
                for name in names:
                    with contextlib.suppress(LibvirtdError):
                        self.virsh("destroy", name, timeout=20)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._kill_namespace()
        self.proc = None
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> list[int]:
        """PIDs still in the daemon's mount namespace (QEMU a stop failed to end)."""
        if self.mntns is None:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/mnt") == self.mntns:
                        found.append(int(entry))
        return found

    def _kill_namespace(self) -> None:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            pids = self.leftovers()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while self.leftovers() and time.monotonic() < deadline:
                time.sleep(0.1)

    # -- calls ----------------------------------------------------------------------------

    def _why(self, what: str, domain: str | None = None) -> str:
        parts = [what, f"libvirtd's log ({self.log}):", _tail(self.log),
                 "its output:", _tail(self.dir / "daemon.out", 10)]
        if domain is not None:
            qlog = self.dir / "log" / "qemu" / f"{domain}.log"
            parts += [f"the domain's QEMU log ({qlog}):", _tail(qlog, 20)]
        return "\n".join(parts)

    def virsh(self, *args: str, timeout: float = CALL_TIMEOUT,
              domain: str | None = None) -> subprocess.CompletedProcess[str]:
        """``virsh`` against this daemon; LibvirtdError (with the logs) when it fails or
        does not answer within ``timeout``."""
        try:
            done = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise LibvirtdTimeout(self._why(
                f"virsh {' '.join(args)}: no answer within {timeout:g} s",
                domain)) from None
        if done.returncode != 0:
            raise LibvirtdError(self._why(
                f"virsh {' '.join(args)} failed: {done.stderr.strip()}", domain))
        return done

    def create(self, xml: Path, name: str, timeout: float = CREATE_TIMEOUT) -> None:
        """Start the transient domain ``name`` from ``xml``. If that fails, the domain is
        destroyed should it exist; if libvirtd does not answer in time, the daemon is
        stopped with everything it started (libvirt may still create the domain after the
        caller gave up, and a guest left running would take a CPU from every later
        boot). Either way the error carries libvirtd's log."""
        try:
            self.virsh("create", str(xml), timeout=timeout, domain=name)
        except LibvirtdTimeout:
            self.stop()
            raise
        except LibvirtdError:
            with contextlib.suppress(LibvirtdError):
                self.virsh("destroy", name, timeout=20)
            raise

    def destroy(self, name: str) -> None:
        self.virsh("destroy", name, timeout=20, domain=name)
