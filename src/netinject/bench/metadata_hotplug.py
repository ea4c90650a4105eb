"""NIC hot-plug through stock nova's metadata API, as a benchmark (``bench
metadata-hotplug``, issue 23): what tests/test_e2e_metadata.py shows once per stack,
as medians of several boots, against DHCP on the same boots and cloud-init's hotplug.

Per run, each stack's inject image is booted once (runs interleaved: run 1 of every
stack, then run 2, ...), its instance made in the local OpenStack peer as nova has it
(openstack/metadata_bed.py: Neutron's objects, nova's drive, nova's database record
and its metadata API with ``[api] metadata_cache_expiration`` at nova's default 15 s for
every stack; netinject's vendordata service, started once, as nova's DynamicJSON
target; the signing proxy at the guest's 169.254.169.254). In that guest:

1. ``cycles`` times: attach as stock nova does (a port on a new network in Neutron,
   nova's attach_interface, QMP device_add; no DHCP server on tap1): device_add to the
   NIC's first ARP answer on its static address (the guest's ``ip -j`` must show the
   address); detach as nova does (device_del, detach_interface): device_del until eth1's
   config (its files and udev rule) is gone from the guest. The guest's own udev
   triggers ask the metadata API; nothing goes through the guest agent but the checks.
2. Drift: the drift timer's period set in /etc/netinject/sync.conf right after boot
   (the timer then runs on it through the cycles); the first subnet's DNS servers and
   host routes and the port's fixed IP changed in Neutron: from the change until the
   guest's own report shows all of it (the next check: up to a period plus its
   randomized delay of a sixth of it, then the sync).
3. DHCP, last: the same NIC plugged without nova's attach (the answer never carries its
   MAC; netinject leaves it to the image), the image's own DHCP config for it
   (bench/hotplug.py's DHCP step, dnsmasq answering at once): device_add to the first
   ARP answer. Last because netinject's add trigger asks about an unknown MAC for a
   minute.

Then, unless left out, the peer: cloud-init's own hotplug (the ``cloud-init-hotplug``
image, the ifupdown test bed's, without netinject) through the same nova, ``cycles``
attaches per boot as the end-to-end peer test does. Every stack is compared with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NetinjectError
from ..model import Nic
from ..openstack import metadata_bed as bed
from ..openstack.metadata_proxy import Binding
from ..openstack.peer import Peer, Tenant, nova_metadata_api, running_service
from ..qga import GuestAgent
from ..vm import image as images
from ..vm import testbed as vm
from ..vm.harness import BootSpec, Guest, HarnessError, kvm_usable, running
from ..vm.progress import Progress
from . import hotplug as qga_bench
from .hotplug import SETTLE_S, VARIANTS, spread
from .stats import median, table, utc_now

PERIOD_S = 60  # the drift timer's period (sync.conf's floor)
PEER_VARIANT = "cloud-init-hotplug"
PEER_STACK = "ifupdown"  # the test bed whose image the peer's is
DETACH_WAIT_S = 120.0  # device_del -> eth1's config gone, netinject (else "never")
ADD_WAIT_S = 90.0  # the first ARP answer -> the add trigger's sync ended (its transaction)
PEER_DETACH_WAIT_S = 90.0  # the same for cloud-init (the end-to-end peer test's)
CLOUD_INIT_WAIT_S = 300.0  # cloud-init's first boot finished (its hook waits for it)
PEER_ENI = "/etc/network/interfaces.d/50-cloud-init"
GOAL = "ahead of cloud-init's hotplug on every stack"
# Rough, under TCG (the 2026-12-01 run: 29 min for the defaults): a boot with its
# drift at the floor, DHCP and settling; an attach/detach cycle.
SECONDS_PER_BOOT = 100
SECONDS_PER_CYCLE = 35


# -- the figures ---------------------------------------------------------------------------


def flat(runs: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Per-run lists of per-cycle figures as one list (medians over every cycle)."""
    return [v for run in runs for v in run]


@dataclass
class Cycles:
    """One contender's attach/detach figures: ``[run][cycle]``, seconds (None: that
    cycle did not give the figure; ``errors`` says why, or for a detach ``never`` says
    the config was still there after the wait). Field order is the JSON's."""

    attach_s: list[list[float | None]] = field(default_factory=list)
    detach_s: list[list[float | None]] = field(default_factory=list)
    detach_never: list[list[bool]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def new_run(self) -> None:
        for name in ("attach_s", "detach_s", "detach_never"):
            getattr(self, name).append([])

    def new_cycle(self) -> None:
        """Open a cycle's entries (None until measured), so the lists stay aligned."""
        self.attach_s[-1].append(None)
        self.detach_s[-1].append(None)
        self.detach_never[-1].append(False)

    def attach_median(self) -> float | None:
        return median(flat(self.attach_s))

    def detach_median(self) -> float | None:
        return median(flat(self.detach_s))

    def nevers(self) -> int:
        return sum(sum(run) for run in self.detach_never)

    def summary(self) -> dict[str, Any]:
        return {"attach_median_s": self.attach_median(),
                "detach_median_s": self.detach_median(), "detach_never_count": self.nevers()}


@dataclass
class StackRuns(Cycles):
    """A stack's figures: its cycles, and per run (one entry each, None as above) the
    drift (Neutron change -> applied) and DHCP's attach -> first ARP answer."""

    drift_s: list[float | None] = field(default_factory=list)
    dhcp_s: list[float | None] = field(default_factory=list)

    def new_run(self) -> None:
        super().new_run()
        self.drift_s.append(None)
        self.dhcp_s.append(None)

    def over_dhcp(self) -> float | None:
        """static / DHCP, attach to first ARP answer (medians)."""
        s, d = self.attach_median(), median(self.dhcp_s)
        return s / d if s is not None and d else None

    def over(self, peer: Cycles | None) -> float | None:
        """static / cloud-init's, attach to first ARP answer (medians)."""
        s, c = self.attach_median(), peer.attach_median() if peer else None
        return s / c if s is not None and c else None

    def ahead(self, peer: Cycles | None) -> bool | None:
        """Whether its attach -> first ARP median is ahead of cloud-init's; None
        without both figures."""
        ratio = self.over(peer)
        return None if ratio is None else ratio < 1


@dataclass
class Results:
    accel: str
    runs: int
    cycles: int
    period_s: int
    stacks: dict[str, StackRuns]
    peer: Cycles | None  # None: left out (--no-peer)
    cache_expiration_s: int = bed.NOVA_CACHE_EXPIRATION
    host: str = field(default_factory=platform.node)
    kernel: str = field(default_factory=platform.release)
    date: str = field(default_factory=utc_now)

    def goal(self) -> bool | None:
        """Issue 23's goal on the medians: every stack ahead of cloud-init's hotplug.
        False as soon as one stack is not; None while a figure is missing."""
        verdicts = [s.ahead(self.peer) for s in self.stacks.values()]
        if False in verdicts:
            return False
        return None if not verdicts or None in verdicts else True

    def to_json(self) -> dict[str, Any]:
        return {
            "stacks": {n: {**dataclasses.asdict(s), **s.summary(),
                           "drift_median_s": median(s.drift_s),
                           "dhcp_median_s": median(s.dhcp_s),
                           "static_over_dhcp": s.over_dhcp(),
                           "static_over_cloud_init": s.over(self.peer),
                           "ahead_of_cloud_init": s.ahead(self.peer)}
                       for n, s in self.stacks.items()},
            "cloud_init": None if self.peer is None else {
                "variant": PEER_VARIANT, "stack": PEER_STACK,
                **dataclasses.asdict(self.peer), **self.peer.summary()},
            "goal": {"text": GOAL, "met": self.goal()},
            "accel": self.accel, "runs": self.runs, "cycles": self.cycles,
            "period_s": self.period_s, "metadata_cache_expiration_s": self.cache_expiration_s,
            "detach_wait_s": {"netinject": DETACH_WAIT_S, "cloud_init": PEER_DETACH_WAIT_S},
            "host": self.host, "kernel": self.kernel, "date": self.date}


# -- presenting ----------------------------------------------------------------------------

HEADERS = ["stack", "attach->ARP", "n", "device_del->gone", "n", "Neutron change->applied",
           "DHCP: attach->ARP", "static/DHCP", "static/cloud-init", "goal"]


def cell(values: Sequence[float | None]) -> str:
    """'median (min-max)' of the figures there are ('-': none)."""
    return spread([v for v in values if v is not None])


def count(values: Sequence[float | None]) -> str:
    """'k/n': figures had of attempts."""
    return f"{sum(v is not None for v in values)}/{len(values)}"


def detach_cell(c: Cycles) -> str:
    figures = flat(c.detach_s)
    never = c.nevers()
    text = cell(figures)
    if never:
        text = f"never {never}/{len(figures)}" if text == "-" else f"{text}, never {never}"
    return text


def ratio(r: float | None) -> str:
    return f"{r:.2f}x" if r is not None else "-"


def verdict(met: bool | None) -> str:
    return "-" if met is None else "met" if met else "NOT met"


def format_table(res: Results) -> str:
    """Per stack the medians (min-max) over every cycle or run, their counts, the ratios
    to DHCP (same boots) and to cloud-init's hotplug, issue 23's goal; the peer's row;
    what the columns are; the errors."""
    rows = [[name, cell(flat(s.attach_s)), count(flat(s.attach_s)), detach_cell(s),
             count(flat(s.detach_s)), cell(s.drift_s), cell(s.dhcp_s), ratio(s.over_dhcp()),
             ratio(s.over(res.peer)), verdict(s.ahead(res.peer))]
            for name, s in res.stacks.items()]
    if res.peer is not None:
        p = res.peer
        rows.append([f"cloud-init ({PEER_STACK} image)", cell(flat(p.attach_s)),
                     count(flat(p.attach_s)), detach_cell(p), count(flat(p.detach_s)),
                     "-", "-", "-", "(reference)", ""])
    lines = [
        f"NIC hot-plug through nova's metadata API per stack: seconds, median (min-max) of "
        f"{res.runs} boot(s) x {res.cycles} cycle(s) each, accel={res.accel}",
        f"nova's [api] metadata_cache_expiration {res.cache_expiration_s} s (nova's "
        f"default) for every stack; drift timer period {res.period_s} s "
        "(/etc/netinject/sync.conf)",
        table(HEADERS, rows),
        "  attach: as stock nova does (Neutron port, nova's attach_interface, QMP "
        "device_add; no DHCP server); ARP: the NIC's first ARP answer on its static "
        "address (asked every 50 ms); n: figures of attempts",
        "  device_del->gone: as nova detaches (device_del, detach_interface) until eth1's "
        f"files and udev rule are gone from the guest (never: still there after "
        f"{DETACH_WAIT_S:.0f} s; cloud-init: its stanza in {PEER_ENI}, "
        f"{PEER_DETACH_WAIT_S:.0f} s)",
        "  Neutron change->applied: DNS servers, host routes and the port's address changed "
        f"in Neutron until the guest shows them (the drift timer, period {res.period_s} s); "
        "once per boot",
        "  DHCP: the same NIC without nova's attach, the image's own DHCP config, dnsmasq "
        "answering at once; once per boot, last",
        "  static/DHCP, static/cloud-init: ratios of the attach->ARP medians (cloud-init's "
        f"from the {PEER_STACK} image, every stack compared with it)",
        f"issue 23's goal, {GOAL}: "
        + (verdict(res.goal()) if res.peer is not None else "- (cloud-init left out)"),
    ]
    errors = [f"{name}: {e}" for name, s in res.stacks.items() for e in s.errors]
    if res.peer is not None:
        errors += [f"cloud-init: {e}" for e in res.peer.errors]
    if errors:
        lines += ["errors:", *errors]
    return "\n".join(lines)


def estimate_minutes(stacks: int, runs: int, cycles: int, peer: bool, period: int) -> int:
    """A rough duration (TCG), for --help and the first progress line."""
    boots = (stacks + (1 if peer else 0)) * runs
    per_boot = SECONDS_PER_BOOT + cycles * SECONDS_PER_CYCLE
    return round((boots * per_boot + stacks * runs * (period - PERIOD_S)) / 60)


# -- measuring -----------------------------------------------------------------------------

# What a failed step raises: the bench records it for that run and goes on.
STEP_ERRORS: tuple[type[BaseException], ...] = (NetinjectError, OSError, ValueError,
                                                LookupError,
                                                subprocess.SubprocessError)


def _step_errors() -> tuple[type[BaseException], ...]:
    from openstack.exceptions import SDKException

    return (*STEP_ERRORS, SDKException)


@dataclass
class _Ctx:
    """What every boot shares."""

    peer: Peer
    service: str  # the vendordata service's URL
    accel: str
    cycles: int
    period: int
    progress: Progress
    errors: tuple[type[BaseException], ...]


@dataclass
class _Boot:
    """One booted guest and its instance in the peer."""

    ctx: _Ctx
    tenant: Tenant
    cloud: bed.Cloud
    binding: Binding
    guest: Guest
    nova: str
    nic: Nic = field(default_factory=bed.hotplug_nic)


def run(stacks: Sequence[str], runs: int, cycles: int, period: int = PERIOD_S,
        with_peer: bool = True, progress: Progress | None = None) -> Results:
    """``runs`` rounds, each booting every stack (in the order given) and then the peer
    once; the vendordata service started once for all."""
    progress = progress or Progress()
    peer = Peer.find()
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(peer.clouds_yaml)
    built = {s: images.build_variant(VARIANTS[s], progress) for s in stacks}
    peer_image = images.build_variant(PEER_VARIANT, progress) if with_peer else None
    accel = "kvm" if kvm_usable(next(iter(built.values()))) else "tcg"
    minutes = estimate_minutes(len(stacks), runs, cycles, with_peer, period)
    progress(f"accelerator: {accel}; about {minutes} min (the estimate under TCG); nova's "
             f"metadata_cache_expiration {bed.NOVA_CACHE_EXPIRATION} s (its default) for "
             f"every stack, drift period {period} s")
    results = Results(accel, runs, cycles, period, {s: StackRuns() for s in stacks},
                      Cycles() if with_peer else None)
    log = peer.state / "bench-metadata-hotplug-service.log"
    with running_service(log) as url:
        ctx = _Ctx(peer, url, accel, cycles, period, progress, _step_errors())
        for r in range(runs):
            for stack in stacks:
                progress(f"run {r + 1}/{runs}: {stack} ...")
                series = results.stacks[stack]
                series.new_run()
                _guarded(ctx, series, f"run {r + 1}", functools.partial(
                    _stack_boot, ctx, stack, built[stack], series, r + 1))
                progress(f"  {stack}: attach {_fmts(series.attach_s[-1])} s, detach "
                         f"{_fmts(series.detach_s[-1])} s, drift {_fmts([series.drift_s[-1]])}"
                         f" s, DHCP {_fmts([series.dhcp_s[-1]])} s")
            if results.peer is not None and peer_image is not None:
                progress(f"run {r + 1}/{runs}: cloud-init ({PEER_VARIANT}) ...")
                p = results.peer
                p.new_run()
                _guarded(ctx, p, f"run {r + 1}",
                         functools.partial(_peer_boot, ctx, peer_image, p, r + 1))
                progress(f"  cloud-init: attach {_fmts(p.attach_s[-1])} s, detach "
                         f"{_fmts(p.detach_s[-1])} s")
    return results


def _fmts(values: Sequence[float | None]) -> str:
    return ", ".join(f"{v:.2f}" if v is not None else "-" for v in values) or "-"


def _guarded(ctx: _Ctx, series: Cycles, where: str, step: Callable[[], None]) -> None:
    """Run ``step``; what it raises is recorded in ``series.errors`` (``where``)."""
    try:
        step()
    except ctx.errors as exc:
        series.errors.append(f"{where}: {type(exc).__name__}: {exc}")
        ctx.progress(f"  {where}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _booted(ctx: _Ctx, stack: str, image: images.VariantImage, cloud_init: bool
            ) -> Iterator[_Boot]:
    """An instance made in the peer (a tenant of its own, deleted afterwards), its
    guest booted, nova's metadata API and the proxy serving it, the guest's network up."""
    tenant = Tenant.open()
    # (as the end-to-end test: the peer may be shared with a bench filling the project)
    tenant.admin.network.update_quota(tenant.project_id, ports=-1, networks=-1, subnets=-1)
    try:
        with tempfile.TemporaryDirectory(prefix="netinject-mdhp-") as tmp:
            cloud = bed.make_instance(ctx.peer, tenant, ctx.service, stack, Path(tmp),
                                      dhcp=not cloud_init, prefix="mdhp")
            binding = Binding(cloud.iid, tenant.project_id, vm.GUEST_IP)
            taps = (("tap1", f"{vm.HOTPLUG_HOST_IP}/24"),)
            spec = (BootSpec(image, None, True, ctx.accel, qga=True, timeout=400,
                             extra_taps=taps, system_uuid=cloud.iid, nova_smbios=True)
                    if cloud_init else
                    BootSpec(image, cloud.drive, False, ctx.accel, qga=True,
                             extra_taps=taps, system_uuid=cloud.iid))
            with nova_metadata_api(ctx.peer, cloud.conf) as nova, running(spec) as guest, \
                    bed.metadata_route(nova, binding, guest):
                # nova builds the instance's metadata on its first read: once from here.
                bed.facts(nova, binding, "eth0")
                reply, _ = guest.wait_network()
                if reply is None:
                    raise HarnessError(f"the guest's network never came up: "
                                       f"{guest.console()[-500:]}")
                with bed.agent(guest) as ga:
                    ga.wait_ready()
                yield _Boot(ctx, tenant, cloud, binding, guest, nova)
    finally:
        tenant.close()


def _stack_boot(ctx: _Ctx, stack: str, image: images.VariantImage, series: StackRuns,
                r: int) -> None:
    with _booted(ctx, stack, image, cloud_init=False) as b:
        b.guest.wait_report()  # boot finished
        # The drift timer on the bench's period from now on, as an operator would set it
        # in the image: the Neutron change below then lands at whatever phase of the
        # period the boot has reached (its figure: the wait for the next check, up to
        # a period and the randomized delay, plus the sync itself).
        with bed.agent(b.guest) as ga:
            bed.set_sync_period(ga, ctx.period)
        time.sleep(SETTLE_S + 1)  # (what boot left running: the agent's announcements)
        for c in range(ctx.cycles):
            series.new_cycle()
            where = f"run {r} cycle {c + 1}"
            _guarded(ctx, series, where,
                     functools.partial(_netinject_cycle, b, stack, series, c, where))
        _guarded(ctx, series, f"run {r} drift", lambda: _drift(b, series))
        _guarded(ctx, series, f"run {r} DHCP",
                 functools.partial(_dhcp, b, stack, series, f"run {r} DHCP"))
        ctx.progress(f"  {stack}: {_diagnose(b, f'{stack} run {r}')}")


def _netinject_cycle(b: _Boot, stack: str, series: StackRuns, c: int, where: str) -> None:
    """Attach as nova does -> first ARP answer (the address checked in the guest);
    detach as nova does -> eth1's config gone; the port and its network deleted."""
    _cycle(b, series, where, f"hp{c}", True, "eth1's config still there",
           lambda ga: bed.eth1_config_gone(ga, stack), DETACH_WAIT_S,
           qga_bench.wait_gone,  # (eth1 and ifupdown's unit gone; then settle)
           _add_done)


def _add_done(ga: GuestAgent) -> None:
    """Until the add trigger's sync has ended (its transaction checks the running state
    after the NIC answers: NetworkManager's ``connection up`` returns seconds later), so
    that the detach is timed from a configured NIC, not from a transaction that the
    NIC's going rolls back."""
    unit = f"netinject-sync-add@{vm.HOTPLUG_MAC}.service"
    bed.wait_for(f"{unit} still running", lambda: bed.run_in_guest(
        ga, "/usr/bin/systemctl", "show", "-p", "ActiveState", "--value", unit
    )[1].strip() in ("inactive", "failed"), ADD_WAIT_S, interval=0.3)


def _cycle(b: _Boot, series: Cycles, where: str, tag: str, dhcp: bool, still: str,
           gone: Callable[[GuestAgent], bool], wait: float,
           settle: Callable[[GuestAgent], None],
           attached: Callable[[GuestAgent], None] | None = None) -> None:
    """One attach/detach cycle of either contender: attach as nova does (a subnet whose
    enable_dhcp is ``dhcp``) -> first ARP answer, the guest's eth1 checked, then
    ``attached`` (what must end before the detach); detach as nova does -> ``gone``
    within ``wait`` of device_del (else ``never``), then ``settle``; the port and its
    network deleted whatever happened."""
    ctx = b.ctx
    port, arp = bed.attach_as_nova(ctx.peer, b.tenant, b.cloud, b.guest, b.nic, tag,
                                   dhcp=dhcp)
    try:
        if arp is None:
            series.errors.append(f"{where}: no ARP answer from {vm.HOTPLUG_IP} "
                                 f"within {bed.ARP_WAIT_S:.0f} s")
        else:
            with bed.agent(b.guest) as ga:
                seen = bed.addrs(ga, "eth1")
            if seen == [(vm.HOTPLUG_IP, 24)]:
                series.attach_s[-1][-1] = arp
            else:
                series.errors.append(f"{where}: the guest's eth1 has {seen!r}; "
                                     f"{_diagnose(b, where)}")
            if attached is not None:
                try:
                    with bed.agent(b.guest) as ga:
                        attached(ga)
                except bed.BedError as exc:  # (recorded; the detach still follows)
                    series.errors.append(f"{where}: {exc}")
        sent, _deleted = bed.detach_as_nova(ctx.peer, b.cloud, b.guest, b.nic, port)
        with bed.agent(b.guest) as ga:
            try:
                bed.wait_for(still, lambda: gone(ga), wait - (time.monotonic() - sent),
                             interval=0.2)
                series.detach_s[-1][-1] = time.monotonic() - sent
            except bed.BedError:
                series.detach_never[-1][-1] = True
            settle(ga)
    finally:
        bed.drop_port(b.tenant, port)


def _diagnose(b: _Boot, where: str) -> str:
    """The guest's side saved beside the service's log (the agent's log, the journal's
    last lines, eth1 now): where a failed cycle went, and after each boot what its
    cycles did."""
    path = b.ctx.peer.state / f"bench-metadata-hotplug-{where.replace(' ', '-')}.log"
    parts = []
    with bed.agent(b.guest) as ga:
        for argv in (("/usr/bin/tail", "-n", "80", "/var/log/netinject.log"),
                     ("/usr/bin/journalctl", "--no-pager", "-n", "200", "-o",
                      "short-monotonic"),
                     ("/usr/bin/ip", "addr", "show", "dev", "eth1")):
            try:
                code, out = bed.run_in_guest(ga, *argv)
            except b.ctx.errors as exc:
                code, out = -1, f"{type(exc).__name__}: {exc}"
            parts.append(f"$ {' '.join(argv)} (exit {code})\n{out}")
    path.write_text("\n".join(parts))
    return f"the guest's log and journal in {path}"


def _drift_wait(period: int) -> float:
    """How long the drift step waits: the timer's worst case (a period, its randomized
    delay of a sixth, its accuracy of a sixtieth) and 90 s for the sync itself."""
    return period + period // 6 + period // 60 + 90


def _drift(b: _Boot, series: StackRuns) -> None:
    """The Neutron change (the timer running on its period since the boot, untouched);
    until the guest shows all of it."""
    bed.change_in_neutron(b.tenant, b.cloud)
    t0 = time.monotonic()
    with bed.agent(b.guest) as ga:
        bed.wait_for("the Neutron change did not reach the guest", lambda: bed.drifted(ga),
                     _drift_wait(b.ctx.period), interval=0.5)
        series.drift_s[-1] = time.monotonic() - t0


def _dhcp(b: _Boot, stack: str, series: StackRuns, where: str) -> None:
    """bench hotplug's DHCP step (DHCP_PREP, dnsmasq on tap1, QMP device_add, the first
    ARP answer; then detached and undone), the NIC never attached through nova. The
    drift timer is stopped first: a sync meanwhile would put back the file DHCP_PREP
    added eth1's DHCP stanza to (ifupdown)."""
    with bed.agent(b.guest) as ga:
        code, out = bed.run_in_guest(ga, "/usr/bin/systemctl", "stop", bed.SYNC_TIMER)
        if code != 0:
            raise bed.BedError(f"systemctl stop {bed.SYNC_TIMER}: {out.strip()}")
    theirs = qga_bench.StackRuns()
    theirs.new_run(static_first=False)
    qga_bench.dhcp_step(qga_bench.Bed(b.guest, stack, theirs, b.ctx.progress))
    series.dhcp_s[-1] = theirs.dhcp_attach_s[-1]
    if series.dhcp_s[-1] is None:
        series.errors.append(f"{where}: no ARP answer from {vm.HOTPLUG_IP} (dnsmasq's)")


def _peer_boot(ctx: _Ctx, image: images.VariantImage, series: Cycles, r: int) -> None:
    """cloud-init's own hotplug (the end-to-end peer test's steps), ``cycles`` times."""
    with _booted(ctx, PEER_STACK, image, cloud_init=True) as b:
        with bed.agent(b.guest) as ga:
            # cloud-init's hook does nothing until cloud-init has finished.
            bed.wait_for("cloud-init did not finish", lambda: bed.exists(
                ga, "/run/cloud-init/result.json"), CLOUD_INIT_WAIT_S)
            if not bed.exists(ga, "/etc/udev/rules.d/10-cloud-init-hook-hotplug.rules"):
                raise bed.BedError("cloud-init wrote no hotplug hook rule")
        time.sleep(SETTLE_S)
        for c in range(ctx.cycles):
            series.new_cycle()
            where = f"run {r} cycle {c + 1}"
            _guarded(ctx, series, where, functools.partial(_peer_cycle, b, series, c, where))


def _peer_cycle(b: _Boot, series: Cycles, c: int, where: str) -> None:
    """Attach as nova does -> first ARP answer on cloud-init's static address; detach
    -> eth1's stanza gone from cloud-init's file (within PEER_DETACH_WAIT_S, or never)."""
    _cycle(b, series, where, f"ci{c}", False, "eth1's stanza still there",
           lambda ga: "eth1" not in ga.read_file(PEER_ENI).decode(), PEER_DETACH_WAIT_S,
           lambda _ga: time.sleep(SETTLE_S))
