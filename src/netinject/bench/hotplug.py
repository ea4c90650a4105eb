"""Hot-plug and live-change benchmark (``bench hotplug``), per network stack: each run
boots every stack's inject image once (qemu-guest-agent on, a second tap link in the
namespace), then in that guest

1. **static**: ``hotplug.attach`` of the test bed's second NIC (its config applied
   through the agent, then QMP ``device_add``): from the attach, and from the request,
   to the first ARP answer from its static address on tap1;
2. **DHCP**: the same NIC attached with no injected config, brought up by the image's
   own DHCP config (DHCP_PREP), dnsmasq answering at once on tap1: from the attach to
   the first ARP answer from the address dnsmasq hands out. The host waits for the
   address through the agent as ``hotplug.attach`` does, so both paths carry the same
   polling. Static and DHCP alternate which goes first from run to run, each detached
   afterwards so the next starts clean;
3. **sync**: a Neutron change (a host route and a DNS server added to the first NIC's
   subnet; the MTU left alone) through ``hotplug.configure``: from the call until the
   guest's own ``ip route`` and resolv.conf show it, and the agent's own time for it.

After each attach the guest's journal says where the time went (GUEST_EVENTS), its
timestamps put on this host's clock through the agent's ``guest-get-time``. The table is
``format_table``'s; every figure per run is kept for ``--json``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..hotplug import (
    ApplyOutcome,
    GuestSide,
    HotplugError,
    QmpAttacher,
    attach,
    configure,
    detach,
    wait_for_address,
    with_port,
)
from ..model import Nic
from ..qga import GuestAgent, QgaError
from ..render import Options
from ..sources.neutron import parse_document
from ..vm import testbed as vm
from ..vm.harness import Guest, HarnessError, _dnsmasq, first_reply, running, start_prober
from ..vm.progress import Progress
from ..vm.scenarios import Prepared
from .boot import accelerator
from .stats import fmt, median, table, utc_now

VARIANTS = vm.INJECT_VARIANTS
NEW_ROUTE, NEW_DNS = vm.NEW_ROUTE, vm.NEW_DNS
GOAL_S = 1.0  # issue 22: static attach -> first ARP answer, under TCG
WAIT_S = 60.0  # for an address, an ARP answer, a detached NIC
SETTLE_S = 2.0  # after boot finished, and after a detach, before the next step

# Where the time goes after device_add, from the guest's journal (kernel lines at the
# kernel's own timestamps): the first line matching, from the new device's first line on:
# (from the kernel?, pattern). ``stack``: the stack's first line naming eth1 (systemd
# starting ifup@eth1, networkd's or NetworkManager's first word of it); ``oper_up``: the
# kernel set the link's operstate up (its IPv6 says "link becomes ready"; systemd-networkd
# configures a NIC only then). The kernel holds a new NIC's carrier-on event back up to 1 s
# after its previous link event (linkwatch's rate limit for a link not yet up).
GUEST_EVENTS: dict[str, tuple[bool, str]] = {
    "pci": (True, r"^pci \S+: \[1af4:1000\]"),
    "probe": (True, r"^virtio-pci \S+: enabling device"),
    "stack": (False, r"\beth1\b"),
    "oper_up": (True, r"ADDRCONF\(NETDEV_CHANGE\): eth1: link becomes ready"),
}
# Whose lines are the stack's (SYSLOG_IDENTIFIER).
STACK_IDS = {"ifupdown": ("systemd", "ifup", "dhclient"), "networkd": ("systemd-networkd",),
             "netplan": ("systemd-networkd",), "nm": ("NetworkManager",)}
SIDE = GuestSide()


def changed_document() -> dict[str, Any]:
    """The test bed's instance after an operator's change in Neutron: one more host
    route and DNS server on its subnet (the MTU unchanged)."""
    doc = copy.deepcopy(vm.document())
    doc["subnets"][0]["host_routes"].append({"destination": NEW_ROUTE,
                                             "nexthop": vm.HOST_IP})
    doc["subnets"][0]["dns_nameservers"].append(NEW_DNS)
    return doc


@dataclass
class StackRuns:
    """One stack's figures, one entry per run in run order (None: that run did not show
    the figure; ``errors`` says why). Seconds unless named _ms; ``*_guest``: per run,
    GUEST_EVENTS seen, seconds after device_add. Field order is the JSON's."""

    static_attach_s: list[float | None] = field(default_factory=list)
    static_request_s: list[float | None] = field(default_factory=list)
    static_agent_ms: list[float | None] = field(default_factory=list)
    dhcp_attach_s: list[float | None] = field(default_factory=list)
    sync_s: list[float | None] = field(default_factory=list)
    sync_agent_ms: list[float | None] = field(default_factory=list)
    sync_eth0_gap_s: list[float | None] = field(default_factory=list)
    exec_ms: list[float | None] = field(default_factory=list)
    static_first: list[bool] = field(default_factory=list)
    static_guest: list[dict[str, float]] = field(default_factory=list)
    dhcp_guest: list[dict[str, float]] = field(default_factory=list)
    agent_logs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def new_run(self, static_first: bool) -> None:
        """Open a run's entries (None until measured), so the lists stay aligned."""
        for name in ("static_attach_s", "static_request_s", "static_agent_ms",
                     "dhcp_attach_s", "sync_s", "sync_agent_ms", "sync_eth0_gap_s",
                     "exec_ms"):
            getattr(self, name).append(None)
        self.static_first.append(static_first)
        self.static_guest.append({})
        self.dhcp_guest.append({})
        self.agent_logs.append("")

    def ratio(self) -> float | None:
        """static / DHCP, attach to first ARP answer (medians)."""
        s, d = median(self.static_attach_s), median(self.dhcp_attach_s)
        return s / d if s is not None and d else None

    def goal(self) -> bool | None:
        """Whether issue 22's goal holds on the medians: static attach -> ARP within
        GOAL_S and ahead of DHCP's; None without figures."""
        s, ratio = median(self.static_attach_s), self.ratio()
        if s is None or ratio is None:
            return None
        return s <= GOAL_S and ratio < 1

    def guest_median(self, which: str, event: str) -> float | None:
        runs = self.static_guest if which == "static" else self.dhcp_guest
        return median([r.get(event) for r in runs])


@dataclass
class HotplugResults:
    accel: str
    runs: int
    stacks: dict[str, StackRuns]
    host: str = field(default_factory=platform.node)
    kernel: str = field(default_factory=platform.release)
    date: str = field(default_factory=utc_now)

    def to_json(self) -> dict[str, Any]:
        return {"stacks": {n: {**dataclasses.asdict(s),
                               "static_attach_median_s": median(s.static_attach_s),
                               "dhcp_attach_median_s": median(s.dhcp_attach_s),
                               "static_over_dhcp": s.ratio(), "goal_met": s.goal()}
                           for n, s in self.stacks.items()},
                "accel": self.accel, "runs": self.runs, "goal_s": GOAL_S,
                "host": self.host, "kernel": self.kernel, "date": self.date}


# -- presenting ---------------------------------------------------------------------------

HEADERS = ["stack", "static: attach->ARP", "request->ARP", "agent ms", "DHCP: attach->ARP",
           "static/DHCP", "goal", "sync: call->guest", "agent ms", "eth0 silent",
           "process ms"]
TIMELINE_HEADERS = ["stack", "path", "pci", "probe", "stack", "oper up", "ARP"]


def spread(values: Sequence[float | None], ms: bool = False) -> str:
    """'median (min-max)' of the runs that gave the figure, '-' when none did; with
    runs that did not, 'k/n' of them did."""
    ok = [v for v in values if v is not None]
    if not ok:
        return "-"
    f = "{:.0f}" if ms else "{:.2f}"
    text = f.format(statistics.median(ok))
    if len(ok) > 1:
        text += f" ({f.format(min(ok))}-{f.format(max(ok))})"
    return text if len(ok) == len(values) else f"{text} {len(ok)}/{len(values)}"


def _goal_word(s: StackRuns) -> str:
    met = s.goal()
    return "-" if met is None else "met" if met else "NOT met"


def format_table(res: HotplugResults) -> str:
    """The figures as text: per stack the medians (min-max) of every run, the ratio
    static/DHCP from the same boots, issue 22's goal; then where the time went after
    device_add, from the guest's journal."""
    rows = [[name, spread(s.static_attach_s), spread(s.static_request_s),
             spread(s.static_agent_ms, ms=True), spread(s.dhcp_attach_s),
             f"{r:.2f}x" if (r := s.ratio()) is not None else "-", _goal_word(s),
             spread(s.sync_s), spread(s.sync_agent_ms, ms=True), spread(s.sync_eth0_gap_s),
             spread(s.exec_ms, ms=True)]
            for name, s in res.stacks.items()]
    timeline = [[name, which, *(fmt2(s.guest_median(which, e)) for e in GUEST_EVENTS),
                 fmt2(median(s.static_attach_s if which == "static" else s.dhcp_attach_s))]
                for name, s in res.stacks.items() for which in ("static", "dhcp")]
    lines = [f"NIC hot-plug and live changes per stack: seconds, median (min-max) of "
             f"{res.runs} run(s) each, one boot per stack and run, accel={res.accel}",
             table(HEADERS, rows),
             "  attach: QMP device_add; ARP: the NIC's first ARP answer on its link (asked "
             "every 50 ms); request: the hotplug.attach call (the agent's apply included)",
             "  agent ms: the agent's own time in the guest (its log); static/DHCP: the "
             "ratio of the attach->ARP medians, same boots",
             f"  goal (issue 22): static attach->ARP <= {GOAL_S:.0f} s and ahead of DHCP "
             "(medians)",
             "  sync: a host route and a DNS server added through hotplug.configure, until "
             "the guest's ip route and resolv.conf show them; eth0 silent: the longest time "
             "eth0 answered no ARP meanwhile",
             f"  process ms: what starting a program costs in the guest ({EXEC_LOOP} runs "
             "of /usr/bin/true in a loop, each run's mean): a stack's hot-plug path is a "
             "chain of them",
             "after device_add, from the guest's journal (s, medians): pci = the guest sees "
             "the device, probe = its driver starts, stack = the stack's first line naming "
             "eth1, oper up = the kernel's operstate up (its IPv6 'link becomes ready'; '-': "
             "not logged, as when it came before the link was set up or IPv6 is off)",
             table(TIMELINE_HEADERS, timeline)]
    errors = [f"{name}: {e}" for name, s in res.stacks.items() for e in s.errors]
    if errors:
        lines += ["errors:", *errors]
    return "\n".join(lines)


def fmt2(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "-"


# -- measuring ----------------------------------------------------------------------------


def run(stacks: Sequence[str], runs: int, progress: Progress) -> HotplugResults:
    """``runs`` rounds, each booting every stack once in the order given (interleaved);
    static first on even rounds, DHCP first on odd ones."""
    prepared = Prepared(tuple(VARIANTS[s] for s in stacks), progress)
    try:
        accel = accelerator(prepared)
        progress(f"accelerator: {accel}")
        results = HotplugResults(accel, runs, {s: StackRuns() for s in stacks})
        for r in range(runs):
            for stack in stacks:
                progress(f"run {r + 1}/{runs}: {stack} ...")
                series = results.stacks[stack]
                series.new_run(static_first=r % 2 == 0)
                try:
                    _one_boot(prepared, stack, accel, series, progress)
                except (HarnessError, QgaError, HotplugError, OSError) as exc:
                    series.errors.append(f"run {r + 1}: {type(exc).__name__}: {exc}")
                    progress(f"  {stack}: {exc}")
                progress(f"  {stack}: static {fmt2(series.static_attach_s[-1])} s, DHCP "
                         f"{fmt2(series.dhcp_attach_s[-1])} s, sync {fmt2(series.sync_s[-1])}"
                         f" s (agent {fmt(series.sync_agent_ms[-1])} ms)")
    finally:
        prepared.close()
    return results


@dataclass
class Bed:
    """One booted guest and what the steps share."""

    guest: Guest
    stack: str
    series: StackRuns
    progress: Progress
    doc: dict[str, Any] = field(default_factory=vm.document)

    @contextlib.contextmanager
    def agent(self) -> Iterator[GuestAgent]:
        """A connection of its own per step (QEMU's agent socket takes one client)."""
        with GuestAgent.unix(self.guest.qga_socket, timeout=30) as ga:
            yield ga

    @property
    def nic(self) -> Nic:
        port, subnet, network = vm.hotplug_port()
        inst = parse_document(with_port(self.doc, port, [subnet], [network])).instance
        return next(n for n in inst.nics if n.port_id == vm.HOTPLUG_PORT_ID)

    def attacher(self) -> QmpAttacher:
        return QmpAttacher(str(self.guest.qmp_socket))

    def put(self, name: str, value: Any) -> None:
        getattr(self.series, name)[-1] = value


def _one_boot(prepared: Prepared, stack: str, accel: str, series: StackRuns,
              progress: Progress) -> None:
    spec = dataclasses.replace(prepared.spec(VARIANTS[stack], accel), qga=True,
                               extra_taps=(("tap1", f"{vm.HOTPLUG_HOST_IP}/24"),))
    with running(spec) as guest:
        reply, _ = guest.wait_network()
        if reply is None:
            raise HarnessError(f"{stack}: the guest's network never came up")
        guest.wait_report()  # boot finished
        time.sleep(SETTLE_S + 1)  # (what boot left running: the agent's announcements)
        bed = Bed(guest, stack, series, progress)
        with bed.agent() as ga:
            ga.wait_ready()
            bed.put("exec_ms", exec_ms(ga))
        steps: list[Callable[[Bed], None]] = [_static, dhcp_step]
        for step in steps if series.static_first[-1] else steps[::-1]:
            try:
                step(bed)
            except (QgaError, HotplugError, HarnessError) as exc:
                series.errors.append(f"run {len(series.sync_s)} {step.__name__[1:]}: {exc}")
                progress(f"  {step.__name__[1:]}: {exc}")
        _sync(bed)


def _probe_tap1(bed: Bed) -> tuple[Any, list[dict[str, Any]]]:
    return start_prober(bed.guest.ns, "tap1", vm.HOTPLUG_IP, vm.HOTPLUG_HOST_IP, WAIT_S + 30)


def _static(bed: Bed) -> None:
    """hotplug.attach with the NIC's config; then hotplug.detach."""
    port, subnet, network = vm.hotplug_port()
    prober, events = _probe_tap1(bed)
    try:
        with bed.agent() as ga:
            t0 = time.monotonic()
            res = attach(bed.doc, port, ga, bed.attacher(), "tap1", [subnet], [network],
                         timeout=WAIT_S)
        assert res.attached_at is not None
        arp = first_reply(events, res.attached_at, WAIT_S)
    finally:
        prober.terminate()
    bed.put("static_attach_s", arp)
    bed.put("static_request_s", arp + res.attached_at - t0 if arp is not None else None)
    with bed.agent() as ga:
        bed.put("static_agent_ms", agent_ms(ga))
        bed.series.static_guest[-1] = guest_events(ga, res.attached_at, bed.stack)
    doc = with_port(bed.doc, port, [subnet], [network])
    with bed.agent() as ga:
        detach(doc, vm.HOTPLUG_PORT_ID, ga, bed.attacher())
        wait_gone(ga)


def dhcp_step(bed: Bed) -> None:
    """The NIC attached with no injected config, the image's DHCP config for it in
    place (DHCP_PREP), dnsmasq answering; then detached and the DHCP config undone."""
    with bed.agent() as ga:
        undo = DHCP_PREP[bed.stack](ga)
    dnsmasq = _dnsmasq(bed.guest.ns, bed.guest.workdir, tap="tap1", ip=vm.HOTPLUG_IP,
                       mac=vm.HOTPLUG_MAC, router=vm.HOTPLUG_HOST_IP)
    try:
        time.sleep(0.5)  # (dnsmasq bound before the NIC appears)
        if dnsmasq.poll() is not None:
            raise HarnessError("dnsmasq did not start")
        prober, events = _probe_tap1(bed)
        try:
            with bed.agent() as ga:
                attached_at = time.monotonic()
                bed.attacher().attach(bed.nic, "tap1")
                wait_for_address(ga, bed.nic, WAIT_S)  # (as hotplug.attach waits)
            arp = first_reply(events, attached_at, WAIT_S)
        finally:
            prober.terminate()
        bed.put("dhcp_attach_s", arp)
        with bed.agent() as ga:
            bed.series.dhcp_guest[-1] = guest_events(ga, attached_at, bed.stack)
        bed.attacher().detach(bed.nic)
        with bed.agent() as ga:
            wait_gone(ga)
            undo(ga)
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(10)


def _sync(bed: Bed) -> None:
    """A Neutron change (changed_document) through hotplug.configure, timed until the
    guest shows the route and the DNS server; meanwhile eth0 is asked for by ARP every
    50 ms, and the longest silence noted (whether the change took the NIC down)."""
    instance = parse_document(changed_document()).instance
    with _arp_watch(bed.guest.ns) as events, bed.agent() as ga:
        time.sleep(0.5)  # (answers before the change, to measure a gap against)
        t0 = time.monotonic()
        applied = configure(ga, instance, Options(), SIDE)
        if applied.outcome is not ApplyOutcome.APPLIED:
            bed.series.errors.append(f"run {len(bed.series.sync_s)} sync: {applied.detail}")
            return
        deadline = t0 + WAIT_S
        while not _shows_change(ga):
            if time.monotonic() > deadline:
                bed.series.errors.append(f"run {len(bed.series.sync_s)} sync: applied, but "
                                         f"the guest never showed the route and DNS server")
                return
            time.sleep(0.1)
        bed.put("sync_s", time.monotonic() - t0)
        time.sleep(0.3)
        replies = [float(e["t"]) for e in list(events) if e["event"] == "reply"]
        bed.put("sync_eth0_gap_s", longest_gap(replies, t0, time.monotonic()))
        bed.put("sync_agent_ms", agent_ms(ga))
        bed.series.agent_logs[-1] = _tail(ga)


def longest_gap(times: Sequence[float], start: float, end: float) -> float | None:
    """The longest time between ARP answers (``times``) from ``start`` to ``end``, the
    last answer before ``start`` and ``end`` itself counted as its ends; None without an
    answer before ``start`` (nothing to measure against)."""
    before = [t for t in times if t < start]
    if not before:
        return None
    marks = [before[-1], *(t for t in times if start <= t <= end), end]
    return round(max(b - a for a, b in itertools.pairwise(marks)), 3)


@contextlib.contextmanager
def _arp_watch(ns: str) -> Iterator[list[dict[str, Any]]]:
    """The prober asking for eth0's address on tap0 every 50 ms; its events (every
    answer) as they come."""
    proc, events = start_prober(ns, "tap0", vm.GUEST_IP, vm.HOST_IP, WAIT_S * 2, every=True)
    try:
        yield events
    finally:
        proc.terminate()
        proc.wait(10)


def _shows_change(ga: GuestAgent) -> bool:
    routes = ga.exec("/usr/bin/ip", ["-4", "route", "show", "dev", "eth0"]).stdout.decode()
    resolv = ga.read_file("/etc/resolv.conf").decode().split()
    return any(line.split()[:1] == [NEW_ROUTE] for line in routes.splitlines()) \
        and NEW_DNS in resolv


def wait_gone(ga: GuestAgent) -> None:
    """Until eth1 is gone from the guest and ifupdown (if any) is done with it (its
    ``ifdown`` of a DHCP NIC waits seconds in ``dhclient -r`` for the gone NIC; a new
    eth1 meanwhile gets the release and waits for the old unit), then SETTLE_S more."""
    deadline = time.monotonic() + WAIT_S
    while "eth1" in {i.get("name") for i in ga.network_interfaces()} or ga.exec(
            "/bin/systemctl", ["is-active", "ifup@eth1.service"]).stdout.decode().strip() \
            in ("active", "activating", "deactivating", "reloading"):
        if time.monotonic() > deadline:
            raise HarnessError("eth1 still there after its detach")
        time.sleep(0.2)
    time.sleep(SETTLE_S)


# -- the image's own DHCP config for eth1, per stack --------------------------------------

Undo = Callable[[GuestAgent], None]
NETPLAN_DHCP_YAML = "/etc/netplan/60-bench-dhcp-eth1.yaml"
NETPLAN_DHCP = ("network:\n  version: 2\n  ethernets:\n    eth1:\n      dhcp4: true\n")
# netplan's generator on a scratch copy of /etc/netplan; only eth1's networkd file is put
# in /run (as the agent's netplan activation does), so eth0's is not rewritten; then
# networkd reads its files again. (``netplan apply`` would restart networkd for all.)
NETPLAN_GENERATE = (
    "set -e; d=$(mktemp -d); mkdir -p $d/etc; cp -a /etc/netplan $d/etc/; "
    "/usr/libexec/netplan/generate --root-dir $d; "
    "install -m 644 $d/run/systemd/network/10-netplan-eth1.network /run/systemd/network/; "
    "rm -rf $d; networkctl reload")
NETPLAN_UNDO = (f"rm -f {NETPLAN_DHCP_YAML} /run/systemd/network/10-netplan-eth1.network; "
                "networkctl reload")


def _sh(ga: GuestAgent, script: str) -> None:
    res = ga.exec("/bin/sh", ["-c", script], timeout=60)
    if res.exitcode != 0:
        raise HarnessError(f"in the guest: sh -c {script!r}: exit {res.exitcode}: "
                           f"{res.stderr.decode(errors='replace').strip()[-300:]}")


def _prep_ifupdown(ga: GuestAgent) -> Undo:
    """An allow-hotplug DHCP stanza for eth1 after the agent's file (udev's ifup@eth1
    brings it up when it appears); undone by writing the file back."""
    path = "/etc/network/interfaces"
    before = ga.read_file(path)
    ga.write_file(path, before + b"\nallow-hotplug eth1\niface eth1 inet dhcp\n")
    return lambda ga: ga.write_file(path, before)


def _prep_netplan(ga: GuestAgent) -> Undo:
    """An eth1 DHCP file in /etc/netplan (the image's own catch-all was moved aside by
    the agent at first boot: back, it would match eth0 too), generated for networkd."""
    _sh(ga, f"(umask 077; printf '%s' '{NETPLAN_DHCP}' > {NETPLAN_DHCP_YAML}); "
            + NETPLAN_GENERATE)
    return lambda ga: _sh(ga, NETPLAN_UNDO)


def _nothing(ga: GuestAgent) -> Undo:
    return lambda ga: None


# networkd: the image's 99-dhcp.network ([Match] Name=eth*, DHCP=yes) stays beside the
# agent's files and takes any NIC without one; NetworkManager makes a DHCP profile
# ("Wired connection 1") for a new NIC with none of its own.
DHCP_PREP: dict[str, Callable[[GuestAgent], Undo]] = {
    "ifupdown": _prep_ifupdown, "networkd": _nothing, "netplan": _prep_netplan,
    "nm": _nothing}


# -- what the guest says -------------------------------------------------------------------

_TRANSACTION = re.compile(r"\[\s*([0-9.]+) ms\] transaction \S+: applied")


EXEC_LOOP = 20
_EXEC_SCRIPT = ('s=$(date +%s%N); i=0; while [ $i -lt {n} ]; do /usr/bin/true; i=$((i+1)); '
                'done; e=$(date +%s%N); echo $(( (e-s)/1000 ))')


def exec_ms(ga: GuestAgent) -> float | None:
    """What starting a program costs in the guest (ms): EXEC_LOOP runs of /usr/bin/true
    from one shell, their mean. Under emulation it is most of a hot-plug path made of
    process starts (ifupdown's: udev's helper script, systemctl, ifup, a shell per
    stanza line); under KVM about a millisecond."""
    res = ga.exec("/bin/sh", ["-c", _EXEC_SCRIPT.format(n=EXEC_LOOP)])
    out = (res.stdout or b"").decode().strip()
    return int(out) / 1000 / EXEC_LOOP if res.exitcode == 0 and out.isdigit() else None


def agent_ms(ga: GuestAgent) -> float | None:
    """The agent's own time for its last live change: its log's time at the line that
    records the transaction applied (from the agent's start, Python's excluded)."""
    found = _TRANSACTION.findall(ga.read_file("/var/log/netinject.log").decode(
        errors="replace"))
    return float(found[-1]) if found else None


def _tail(ga: GuestAgent, lines: int = 40) -> str:
    text = ga.read_file("/var/log/netinject.log").decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def clock_offset(ga: GuestAgent, samples: int = 5) -> float:
    """The guest's wall clock minus this host's monotonic clock (s), from the agent's
    guest-get-time with the shortest round trip."""
    best: tuple[float, float] = (float("inf"), 0.0)
    for _ in range(samples):
        h1 = time.monotonic()
        guest = int(ga.call("guest-get-time")) / 1e9
        h2 = time.monotonic()
        best = min(best, (h2 - h1, guest - (h1 + h2) / 2))
    return best[1]


def guest_events(ga: GuestAgent, attached_at: float, stack: str) -> dict[str, float]:
    """GUEST_EVENTS in the guest's journal since shortly before ``attached_at`` (this
    host's monotonic clock), as seconds after it."""
    offset = clock_offset(ga)
    since = attached_at + offset - 2
    res = ga.exec("/usr/bin/journalctl", [
        "-b", "-o", "json", "--no-pager", f"--since=@{since:.6f}", "--output-fields="
        "MESSAGE,SYSLOG_IDENTIFIER,_TRANSPORT,_SOURCE_MONOTONIC_TIMESTAMP,"
        "_SOURCE_REALTIME_TIMESTAMP"], timeout=60)
    return journal_events([json.loads(line) for line in res.stdout.decode(
        errors="replace").splitlines() if line.startswith("{")], attached_at + offset,
        STACK_IDS[stack])


def journal_events(entries: Sequence[dict[str, Any]], attached_at: float,
                   stack_ids: Sequence[str]) -> dict[str, float]:
    """GUEST_EVENTS found in journal ``entries`` (journalctl -o json), in seconds after
    ``attached_at`` (the guest's wall clock); matching starts at the new device's first
    kernel line; ``stack_ids``: the SYSLOG_IDENTIFIERs of the stack's lines."""
    out: dict[str, float] = {}
    started = False
    for e in entries:
        msg = e.get("MESSAGE")
        if not isinstance(msg, str):
            continue
        kernel = e.get("_TRANSPORT") == "kernel"
        if not started:
            started = kernel and re.search(GUEST_EVENTS["pci"][1], msg) is not None
        if not started:
            continue
        for name, (from_kernel, pattern) in GUEST_EVENTS.items():
            if name in out or from_kernel != kernel or re.search(pattern, msg) is None:
                continue
            if not kernel and e.get("SYSLOG_IDENTIFIER") not in stack_ids:
                continue
            out[name] = round(_wall(e) - attached_at, 3)
    return out


def _wall(e: dict[str, Any]) -> float:
    """An entry's time on the guest's wall clock (s): its source's own timestamp (the
    kernel's, monotonic, moved by the entry's wall-monotonic pair) when it has one."""
    real, mono = int(e["__REALTIME_TIMESTAMP"]), int(e["__MONOTONIC_TIMESTAMP"])
    if "_SOURCE_REALTIME_TIMESTAMP" in e:
        return int(e["_SOURCE_REALTIME_TIMESTAMP"]) / 1e6
    if "_SOURCE_MONOTONIC_TIMESTAMP" in e:
        return (int(e["_SOURCE_MONOTONIC_TIMESTAMP"]) + real - mono) / 1e6
    return real / 1e6
