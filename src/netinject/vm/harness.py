"""Boot a guest under QEMU with its NIC on a tap link inside a network namespace the
harness creates (and removes), the config drive attached read-only as a virtio disk, a
virtio-serial channel for qemu-guest-agent, a QMP socket, and the serial console captured
to a file. Time-to-network is measured from QEMU's start until the guest answers an ARP
request for its address (the prober in the namespace asks every 50 ms).

Accelerator: KVM when a probe shows it can boot the kernel, else TCG. On the machines
this was developed on, /dev/kvm exists but cannot boot a stock kernel, so it is TCG.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import NetinjectError
from ..guest import contract
from . import testbed as vm
from .cache import cache_dir
from .image import VariantImage

QEMU = "qemu-system-x86_64"
REPORT_BEGIN = "=== NETINJECT-REPORT BEGIN ==="
REPORT_END = "=== NETINJECT-REPORT END ==="


class HarnessError(NetinjectError):
    """The harness could not set up or run a boot."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False,
                          timeout=30)
    if done.returncode != 0:
        raise HarnessError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def netns(links: tuple[tuple[str, str], ...] = (("tap0", f"{vm.HOST_IP}/{vm.PREFIX}"),)
          ) -> Iterator[str]:
    """A fresh network namespace with tap links (name, host address), removed on exit."""
    if os.geteuid() != 0:
        raise HarnessError("booting guests needs root (network namespaces, tap links)")
    # (the creating process's pid in the name: a test can tell its own from those of
    # boots running beside it)
    name = f"ni-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        for tap, addr in links:
            _ip("-n", name, "tuntap", "add", "dev", tap, "mode", "tap")
            _ip("-n", name, "addr", "add", addr, "dev", tap)
            _ip("-n", name, "link", "set", tap, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def kvm_usable(image: VariantImage, timeout: float = 20.0) -> bool:
    """Can KVM boot this kernel here? Boots it with no init and waits for the panic that
    proves the kernel ran; a hang (as on paravirtual KVM hosts) means no. Cached."""
    forced = os.environ.get("NETINJECT_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    marker = cache_dir() / f"kvm-probe-{image.kernel.name}"
    if marker.exists():
        return marker.read_text().strip() == "yes"
    with tempfile.TemporaryDirectory() as tmp:
        console = Path(tmp) / "console"
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults",
                            "-display", "none", "-no-reboot", "-serial", f"file:{console}",
                            "-kernel", str(image.kernel), "-append",
                            "console=ttyS0 panic=-1 rdinit=/nonexistent"],
                           capture_output=True, timeout=timeout, check=False)
        text = console.read_text(errors="replace") if console.exists() else ""
    ok = "Kernel panic" in text or "Run /" in text
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("yes\n" if ok else "no\n")
    return ok


@dataclass
class BootSpec:
    image: VariantImage
    drive: Path | None = None
    dhcp_server: bool = False
    accel: str = "tcg"
    memory_mb: int = 1024
    timeout: float = 240.0
    report_timeout: float = 120.0
    extra_append: str = ""
    qga: bool = False
    extra_taps: tuple[tuple[str, str], ...] = ()
    snapshot: bool = True  # False: boots write to the image (for second-boot runs)
    # The SMBIOS system UUID, as nova/libvirt set it (the instance uuid): the agent trusts
    # a drive only if its manifest names this uuid.
    system_uuid: str | None = vm.INSTANCE_UUID
    # nova's SMBIOS system fields (libvirt's <sysinfo>: "OpenStack Nova"), which
    # cloud-init's OpenStack datasource looks for before it asks the metadata API.
    nova_smbios: bool = False


@dataclass
class BootResult:
    time_to_network_s: float | None
    first_garp_s: float | None
    console: str
    report: dict[str, str] = field(default_factory=dict)
    accel: str = "tcg"
    boot_s: float | None = None  # QEMU start -> boot finished (the report begins)

    @property
    def agent_log(self) -> str:
        return self.report.get("netinject-log", "")

    @property
    def agent_result(self) -> dict[str, str] | None:
        """The agent's result line (the contract's machine-readable last line)."""
        return contract.parse_result(self.agent_log)

    def agent_cost_ms(self) -> float | None:
        """The agent's own time, from the launcher's first line to its result line."""
        result = self.agent_result
        return float(result["elapsed_ms"]) if result and "elapsed_ms" in result else None

    def agent_cpu_ms(self) -> float | None:
        """The agent's CPU time (the rest of agent_cost_ms is waiting: I/O, other
        tasks); None on a later boot the launcher decided alone."""
        result = self.agent_result
        return float(result["cpu_ms"]) if result and "cpu_ms" in result else None

    def unit_times(self, section: str = "unit-times") -> dict[str, tuple[float, float]]:
        """Unit -> (started, finished) in ms since boot, from systemd's own timestamps
        (InactiveExit and ActiveEnter, monotonic); units that did not run are left out.
        ``all-unit-times`` (boots with ``netinject.timeline``) has every loaded unit."""
        out: dict[str, tuple[float, float]] = {}
        for block in self.report.get(section, "").split("\n\n"):
            fields = dict(line.partition("=")[::2] for line in block.splitlines())
            try:
                start = int(fields["InactiveExitTimestampMonotonic"]) / 1000
                end = int(fields["ActiveEnterTimestampMonotonic"]) / 1000
            except (KeyError, ValueError):
                continue
            if start and end:
                out[fields.get("Id", "?")] = (start, end)
        return out

    def agent_off_critical_path(self) -> bool | None:
        """Whether netinject.service finished before networking.service could start
        anyway (networking waits for ifupdown-pre, which waits for udev to settle);
        None when either unit's times are missing."""
        times = self.unit_times()
        agent, gate = times.get("netinject.service"), times.get("ifupdown-pre.service")
        if agent is None or gate is None:
            return None
        return agent[1] <= gate[1]

    def bootchart_svg(self) -> bytes | None:
        """The SVG systemd-bootchart wrote (boots with ``netinject.bootchart``), carried
        gzip'd and base64'd in the report's ``bootchart`` section."""
        import base64
        import binascii
        import gzip

        text = "".join(self.report.get("bootchart", "").split())
        if not text:
            return None
        try:
            return gzip.decompress(base64.b64decode(text, validate=True))
        except (binascii.Error, OSError, EOFError):
            return None

    def json_section(self, name: str) -> Any:
        text = self.report.get(name, "").strip()
        return json.loads(text) if text else None


def parse_report(console: str) -> dict[str, str]:
    """The sections between the report markers on the console."""
    start = console.rfind(REPORT_BEGIN)
    end = console.find(REPORT_END, start)
    if start < 0 or end < 0:
        return {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in console[start + len(REPORT_BEGIN):end].splitlines():
        line = line.rstrip("\r")
        if line.startswith("--- "):
            current = line[4:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {k: "\n".join(v).strip() for k, v in sections.items()}


def qemu_args(spec: BootSpec, workdir: Path, macs: tuple[str, ...] = (vm.GUEST_MAC,)
              ) -> list[str]:
    img = spec.image
    # A guest driven through its agent (qga) stays up until the test stops it; the others
    # power off once their report is printed.
    poweroff = "" if spec.qga else "netinject.poweroff"
    append = " ".join(w for w in (img.kernel_append, poweroff, spec.extra_append) if w)
    args = [QEMU, "-accel", spec.accel, "-m", str(spec.memory_mb), "-smp", "1",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", f"file:{workdir / 'console.log'}",
            "-kernel", str(img.kernel), "-initrd", str(img.initrd), "-append", append,
            "-drive", f"file={img.image},if=virtio,format=raw,"
                      f"snapshot={'on' if spec.snapshot else 'off'}",
            "-qmp", f"unix:{workdir / 'qmp.sock'},server=on,wait=off"]
    if spec.accel == "kvm":
        args[3:3] = ["-cpu", "host"]
    if spec.system_uuid is not None:
        # What libvirt passes for <uuid> (nova: the instance uuid); the guest reads it in
        # /sys/class/dmi/id/product_uuid.
        args += ["-uuid", spec.system_uuid]
    if spec.nova_smbios:
        args += ["-smbios", "type=1,manufacturer=OpenStack Foundation,"
                            "product=OpenStack Nova,family=Virtual Machine"]
    if spec.drive is not None:
        args += ["-drive", f"file={spec.drive},if=virtio,format=raw,readonly=on"]
    for i, mac in enumerate(macs):
        args += ["-netdev", f"tap,id=n{i},ifname=tap{i},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=n{i},mac={mac}"]
    if spec.qga:
        args += ["-device", "virtio-serial",
                 "-chardev", f"socket,path={workdir / 'qga.sock'},server=on,wait=off,id=qga0",
                 "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
    return args


def _dnsmasq(ns: str, workdir: Path, tap: str = "tap0", ip: str = vm.GUEST_IP,
             mac: str = vm.GUEST_MAC, router: str = vm.HOST_IP) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--no-resolv",
         "--no-hosts", "--port=0", f"--interface={tap}", "--bind-interfaces",
         "--dhcp-authoritative", f"--dhcp-range={ip},{ip},255.255.255.0,1h",
         f"--dhcp-host={mac},{ip}", f"--dhcp-option=option:router,{router}",
         f"--dhcp-leasefile={workdir / f'leases-{tap}'}", "--pid-file", "--log-facility=-"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


def first_reply(events: list[dict[str, Any]], t0: float, timeout: float = 90.0
                ) -> float | None:
    """Seconds from ``t0`` (time.monotonic()) to the prober's first ARP reply; None when
    it timed out (or nothing came within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = next((e for e in events if e["event"] in ("reply", "timeout")), None)
        if reply is not None:
            return float(reply["t"]) - t0 if reply["event"] == "reply" else None
        time.sleep(0.02)
    return None


def start_prober(ns: str, tap: str, target: str, source: str, timeout: float,
                 every: bool = False) -> tuple[subprocess.Popen[str], list[dict[str, Any]]]:
    """Start the ARP prober in the namespace; events are appended to the returned list.
    ``every``: it keeps asking until ``timeout`` and reports every answer."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "netinject.vm.prober",
         "--iface", tap, "--target", target, "--source", source,
         "--timeout", str(timeout), *(["--every"] if every else [])],
        stdout=subprocess.PIPE, text=True)
    events: list[dict[str, Any]] = []
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if not first:
        raise HarnessError("ARP prober failed to start")
    events.append(json.loads(first))

    def pump(stream: IO[str]) -> None:
        for line in stream:
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))

    threading.Thread(target=pump, args=(proc.stdout,), daemon=True).start()
    return proc, events


def _stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Guest:
    """A running guest: the namespace, QEMU, prober and (optionally) dnsmasq."""

    def __init__(self, spec: BootSpec, workdir: Path, ns: str) -> None:
        self.spec, self.workdir, self.ns = spec, workdir, ns
        self.qemu: subprocess.Popen[str] | None = None
        self.dnsmasq: subprocess.Popen[str] | None = None
        self.prober: subprocess.Popen[str] | None = None
        self.events: list[dict[str, Any]] = []
        self.t0 = 0.0
        self.boot_s: float | None = None

    @property
    def qga_socket(self) -> Path:
        return self.workdir / "qga.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def console_path(self) -> Path:
        return self.workdir / "console.log"

    def console(self) -> str:
        p = self.console_path
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self) -> None:
        if self.spec.dhcp_server:
            self.dnsmasq = _dnsmasq(self.ns, self.workdir)
        self.prober, self.events = start_prober(self.ns, "tap0", vm.GUEST_IP, vm.HOST_IP,
                                                self.spec.timeout)
        self.t0 = time.monotonic()
        self.qemu = subprocess.Popen(["ip", "netns", "exec", self.ns,
                                      *qemu_args(self.spec, self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)

    def _watch_boot(self) -> None:
        """Note when the guest's report starts (its boot has finished)."""
        if self.boot_s is None and REPORT_BEGIN in self.console():
            self.boot_s = time.monotonic() - self.t0

    def wait_network(self) -> tuple[float | None, float | None]:
        deadline = self.t0 + self.spec.timeout
        k = 0
        while time.monotonic() < deadline:
            if any(e["event"] in ("reply", "timeout") for e in self.events):
                break
            if self.qemu is not None and self.qemu.poll() is not None:
                break
            k += 1
            if k % 4 == 0:
                self._watch_boot()
                if self.boot_s is not None and REPORT_END in self.console():
                    break  # booted, reported, and never answered: no network
            time.sleep(0.05)
        reply = next((e["t"] - self.t0 for e in self.events if e["event"] == "reply"), None)
        # The prober lingers briefly after the answer for a gratuitous ARP.
        linger_end = time.monotonic() + 3.5
        while reply is not None and time.monotonic() < linger_end and not any(
                e["event"] == "garp" for e in self.events) and self.prober is not None \
                and self.prober.poll() is None:
            time.sleep(0.05)
        garp = next((e["t"] - self.t0 for e in self.events if e["event"] == "garp"), None)
        return reply, garp

    def wait_report(self) -> dict[str, str]:
        deadline = time.monotonic() + self.spec.report_timeout
        while time.monotonic() < deadline:
            self._watch_boot()
            text = self.console()
            if REPORT_END in text:
                return parse_report(text)
            if self.qemu is not None and self.qemu.poll() is not None:
                break
            time.sleep(0.2)
        return parse_report(self.console())

    def stop(self) -> None:
        for proc in (self.qemu, self.prober, self.dnsmasq):
            _stop(proc)


@contextlib.contextmanager
def running(spec: BootSpec) -> Iterator[Guest]:
    for tool in (QEMU, "ip", *(["dnsmasq"] if spec.dhcp_server else [])):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise HarnessError(f"{tool} not found: run scripts/setup.sh")
    with tempfile.TemporaryDirectory(prefix="netinject-boot-") as tmp, \
            netns(((f"tap{0}", f"{vm.HOST_IP}/{vm.PREFIX}"), *spec.extra_taps)) as ns:
        guest = Guest(spec, Path(tmp), ns)
        try:
            guest.start()
            yield guest
        finally:
            guest.stop()


def boot(spec: BootSpec) -> BootResult:
    """One boot: time-to-network, first gratuitous ARP, console and in-guest report."""
    with running(spec) as guest:
        reply, garp = guest.wait_network()
        report = guest.wait_report()
        if not spec.snapshot and guest.qemu is not None:
            # A writable image: let the guest finish its own poweroff (it syncs), so the
            # next boot of the same image sees everything this one wrote.
            with contextlib.suppress(subprocess.TimeoutExpired):
                guest.qemu.wait(timeout=60)
        return BootResult(reply, garp, guest.console(), report, spec.accel, guest.boot_s)
