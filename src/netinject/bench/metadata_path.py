"""netinject bench vendordata --metadata-path: the vendordata service as nova's metadata
API calls it (every guest read of vendor_data2.json), against the real local peer.

With a fleet of ports in the peer's Neutron (default 1,000: 500 instances x 2 ports, one
on each of two networks), already tagged with their NIC map as after the drive build:

1. nova's drive burst: nova's own drive build (InstanceMetadata + make_drive) for a few
   of the fleet's instances, calling a recording target: the time from a drive's first
   call to its last, which the service's ``fresh`` window must cover.
2. One call at a time past ``fresh`` (the revision check: the instance's port listing,
   plus its subnets, networks and image when no other call read them within ``fresh``),
   with nova's Keystone token, round-robin over the instances: p50 and p99.
3. Concurrent clients on the same path against ONE worker process (gunicorn, threaded,
   the service's defaults): calls per second, and the CPU the service and the peer's
   Neutron spent per call. Each guest reads once per period, so one worker serves
   calls/s x period guests.

Every measured call is checked to be past ``fresh`` for its instance (a client waits
when it would not be) and the service's own log to have done the revision check for it.
The figure leaves out nova's metadata API itself (its WSGI workers, its per-instance
cache, Neutron's metadata proxy): it is the service's share of a metadata read.

The fleet is found again by name and deterministic instance ids (creation is
idempotent: a second run reuses what is there and makes only what is missing); it is
deleted at the end unless ``keep``.
"""

from __future__ import annotations

import itertools
import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..openstack.peer import Peer, Tenant, running_service, stand_in
from ..openstack.service import DEFAULT_FRESH
from .stats import table, utc_now
from .vendordata import percentile

PERIOD_S = 1800  # the guest agent's drift timer (netinject-guest sync), default
NAME = "netinject-bench-md"
NAMESPACE = uuid.UUID("5d0e9a3c-5a4e-4f7e-9c1b-6b1f3d2a7e10")
THREADS = 8  # `netinject vendordata serve`'s default threads per worker


def _say(text: str) -> None:
    import sys

    print(f"bench vendordata --metadata-path: {text}", file=sys.stderr, flush=True)


class Fleet:
    """``instances`` x ``per_instance`` ports in the peer's Neutron (one on each of
    ``per_instance`` networks), tagged ``netinject:<instance>:<index>`` as the service
    tags them at drive build, and an image with support_inject_ip."""

    def __init__(self, instances: int, per_instance: int) -> None:
        self.tenant = Tenant.open()
        demo = self.tenant.demo
        self.ids = [str(uuid.uuid5(NAMESPACE, f"{NAME}-{i}")) for i in range(instances)]
        self.nets: list[Any] = []
        self.made_nets: list[str] = []
        for n in range(per_instance):
            name = f"{NAME}-{n}"
            net = demo.network.find_network(name)
            if net is None:
                net = demo.network.create_network(name=name, mtu=1450)
                self.made_nets.append(net.id)
            if not list(demo.network.subnets(network_id=net.id)):
                demo.network.create_subnet(
                    network_id=net.id, ip_version=4, cidr=f"10.{90 + n}.0.0/16",
                    gateway_ip=f"10.{90 + n}.0.1", dns_nameservers=["192.0.2.53"],
                    host_routes=[{"destination": f"198.51.100.{n * 16}/28",
                                  "nexthop": f"10.{90 + n}.0.254"}])
            self.nets.append(net)
        found = [i for i in demo.image.images(name=NAME)]
        self.image = found[0] if found else demo.image.create_image(
            name=NAME, disk_format="qcow2", container_format="bare",
            support_inject_ip="true")
        self.reused = 0
        self.quota_was: int | None = None
        self._ensure_ports()

    def _ensure_ports(self) -> None:
        admin = self.tenant.admin
        # Neutron's default port quota (500 per project) is below the fleet: lifted for
        # the tenant while the fleet exists (put back by delete).
        quota = admin.network.get_quota(self.tenant.project_id)
        if quota.ports != -1 and quota.ports < 2 * len(self.ids) * len(self.nets):
            self.quota_was = quota.ports
            admin.network.update_quota(quota, ports=-1)
        wanted = set(self.ids)
        have: set[tuple[str, str]] = set()
        for net in self.nets:
            for p in admin.network.ports(network_id=net.id):
                if p.device_id in wanted:
                    have.add((p.device_id, net.id))
        self.reused = len(have)
        todo = [(iid, n, net) for iid in self.ids for n, net in enumerate(self.nets)
                if (iid, net.id) not in have]
        if not todo:
            _say(f"fleet: reusing {len(have)} ports")
            return
        _say(f"fleet: creating {len(todo)} ports ({len(have)} already there)")
        done = itertools.count(1)
        t0 = time.monotonic()

        def make(item: tuple[str, int, Any]) -> None:
            iid, n, net = item
            self.tenant.demo.network.create_port(
                network_id=net.id, device_id=iid, device_owner="compute:nova",
                tags=[f"netinject:{iid}:{n}"])
            k = next(done)
            if k % 100 == 0 or k == len(todo):
                _say(f"fleet: {k}/{len(todo)} ports ({time.monotonic() - t0:.0f} s)")
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(make, todo))

    def delete(self) -> None:
        """Ports one at a time (the peer's Neutron is SQLite under eventlet), then the
        networks and image this fleet uses."""
        admin = self.tenant.admin
        ports = [p.id for net in self.nets for p in admin.network.ports(network_id=net.id)]
        _say(f"fleet: deleting {len(ports)} ports")
        for k, pid in enumerate(ports, 1):
            admin.network.delete_port(pid, ignore_missing=True)
            if k % 200 == 0:
                _say(f"fleet: {k}/{len(ports)} deleted")
        for net in self.nets:
            admin.network.delete_network(net.id, ignore_missing=True)
        if self.quota_was is not None:  # as it was before the fleet
            admin.network.update_quota(admin.network.get_quota(self.tenant.project_id),
                                       ports=self.quota_was)
        admin.image.delete_image(self.image.id, ignore_missing=True)


def drive_burst(peer: Peer, fleet: Fleet, drives: int) -> dict[str, Any]:
    """nova's own drive build for ``drives`` of the fleet's instances against a recording
    target: first-to-last call time of each drive."""
    arrivals: list[tuple[float, str]] = []
    with stand_in(arrivals=arrivals) as url:
        conf = peer.nova_conf("bench-md", url)
        admin = fleet.tenant.admin
        builds = [{"instance": iid, "project": fleet.tenant.project_id,
                   "image": fleet.image.id, "hostname": f"md-{n}",
                   "ports": sorted(p.id for p in admin.network.ports(device_id=iid)),
                   "targets": [f"netinject@{url}"],
                   "out": str(peer.state / f"bench-md-{n}.iso")}
                  for n, iid in enumerate(fleet.ids[:drives + 1])]
        try:
            results = peer.build_drives(conf, builds)
        finally:
            for iso in peer.state.glob("bench-md-*.iso"):
                iso.unlink()
    bad = [b["error"] for b in results if b["error"]]
    if bad:
        raise RuntimeError(f"nova's drive build failed: {bad[0]}")
    spans, counts = [], []
    for iid in fleet.ids[1:drives + 1]:  # the first build warms nova up
        times = [t for t, i in arrivals if i == iid]
        counts.append(len(times))
        spans.append((max(times) - min(times)) * 1000 if times else 0.0)
    return {"drives": len(spans), "calls_per_drive": statistics.median(counts),
            "span_ms": {"p50": percentile(spans, 50), "max": max(spans)},
            "make_drive_ms": {"p50": statistics.median(
                r["drive_seconds"] * 1000 for r in results[1:])}}


class Caller:
    """Calls for the fleet's instances, each at least ``fresh`` (+ a margin) after the
    previous call for the same instance (a client waits otherwise, and that is
    counted): every call is on the revision-check path."""

    def __init__(self, url: str, token: str, fleet: Fleet, fresh: float) -> None:
        self.url, self.token, self.image = url, token, fleet.image.id
        self.fresh = fresh + 0.05
        self._lock = threading.Lock()
        self._order: Iterator[str] = itertools.cycle(fleet.ids)
        self._last: dict[str, float] = {}  # instance -> when its last call ended
        self._latest: dict[str, threading.Event] = {}  # instance -> its last call, set at its end
        self.waits = 0
        self._local = threading.local()

    def warm(self, iid: str, tries: int = 20) -> None:
        """The instance's first call (a build, as nova's drive build made it): a 5xx
        (a build past the deadline goes on; a peer slow under the load) is asked again
        until the answer is in."""
        for _ in range(tries - 1):
            try:
                self.one(iid)
                return
            except RuntimeError:
                time.sleep(1.0)
        self.one(iid)

    def one(self, iid: str | None = None) -> float:
        """One call (ms); the next instance in turn unless ``iid``. A call for an
        instance another client is still calling waits for that call to end, then for
        ``fresh`` after it (the service marks an answer checked when its check ends:
        counting from the earlier call's start, seen on a fresh machine, let 1 in 6
        concurrent calls come from memory)."""
        import requests

        with self._lock:
            iid = iid or next(self._order)
            before = self._latest.get(iid)
            mine = threading.Event()
            self._latest[iid] = mine
        try:
            if before is not None:
                before.wait()
            wait = self._last.get(iid, -1e9) + self.fresh - time.monotonic()
            if wait > 0:
                with self._lock:
                    self.waits += 1
                time.sleep(wait)
            if not hasattr(self._local, "s"):
                self._local.s = requests.Session()
            t0 = time.perf_counter()
            r = self._local.s.post(self.url, json={"instance-id": iid,
                                                   "image-id": self.image,
                                                   "hostname": "md"},
                                   headers={"X-Auth-Token": self.token,
                                            "User-Agent": "openstack-nova-vendordata"},
                                   timeout=10)
            took = (time.perf_counter() - t0) * 1000
        finally:
            self._last[iid] = time.monotonic()
            mine.set()
        if r.status_code != 200 or not r.json():
            raise RuntimeError(f"the service answered {r.status_code}: {r.text[:300]}")
        return took


def _cpu_s(pids: set[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _procs() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) of every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d.name)] = (int(f[1]), int(f[3]))
    return out


def service_pids() -> set[int]:
    """This process's descendants (the service's gunicorn master and worker)."""
    procs, mine = _procs(), {os.getpid()}
    found: set[int] = set()
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _sid) in procs.items():
            if ppid in mine | found and pid not in found and pid not in mine:
                found.add(pid)
                grew = True
    return found


def neutron_pids(peer: Peer) -> set[int]:
    sid = int((peer.state / "neutron.pid").read_text())
    return {pid for pid, (_p, s) in _procs().items() if s == sid}


def _checks(log: Path, at_least: int = 0, settle: float = 3.0) -> tuple[int, int]:
    """The service log's revision checks and builds so far. ``at_least``: wait (up to
    ``settle`` s) until that many lines are there: a request's line is written when the
    service is done with it, which can be just after its caller has the answer (seen in
    a fresh-machine run: 5 of 6 lines read at once)."""
    deadline = time.monotonic() + settle
    while True:
        text = log.read_text()
        r, b = text.count(": revalidated in "), text.count(": built in ")
        if r + b >= at_least or time.monotonic() > deadline:
            return r, b
        time.sleep(0.05)


def throughput(caller: Caller, clients: int, calls: int, peer: Peer, log: Path
               ) -> dict[str, Any]:
    svc, neu = service_pids(), neutron_pids(peer)
    c0, n0, (r0, b0), w0 = _cpu_s(svc), _cpu_s(neu), _checks(log), caller.waits
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        took = list(pool.map(lambda _i: caller.one(), range(calls)))
    wall = time.perf_counter() - t0
    r1, b1 = _checks(log, r0 + b0 + calls)
    c1, n1 = _cpu_s(svc), _cpu_s(neu)
    return {"clients": clients, "calls": calls, "wall_s": wall,
            "calls_per_s": calls / wall,
            "ms": {"p50": percentile(took, 50), "p99": percentile(took, 99)},
            "service_cpu_ms_per_call": (c1 - c0) / calls * 1000,
            "neutron_cpu_ms_per_call": (n1 - n0) / calls * 1000,
            "revision_checks": r1 - r0, "builds": b1 - b0, "waits": caller.waits - w0}


def run(ports: int = 1000, per_instance: int = 2, calls: int = 500,
        clients: tuple[int, ...] = (4, 16), drives: int = 8, keep: bool = False,
        workdir: Path | None = None) -> dict[str, Any]:
    import openstack

    peer = Peer.find()
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(peer.clouds_yaml)
    instances = max(1, ports // per_instance)
    _say(f"peer: {peer.state}; fleet: {instances} instances x {per_instance} ports")
    t_fleet = time.monotonic()
    fleet = Fleet(instances, per_instance)
    fleet_s = time.monotonic() - t_fleet
    log = (workdir or peer.state) / "bench-metadata-service.log"
    try:
        _say(f"1/3 nova's drive burst ({drives} drives, nova's own code)")
        burst = drive_burst(peer, fleet, drives)
        with running_service(log, threads=THREADS) as url:
            token = str(openstack.connect(cloud="nova").session.get_token())
            caller = Caller(url, token, fleet, DEFAULT_FRESH)
            _say(f"warming: one call per instance ({instances}, as nova's drive build "
                 "made)")
            caller.warm(fleet.ids[0])  # the service fetches its own token
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(caller.warm, fleet.ids[1:]))
            _say(f"2/3 one call at a time past fresh ({calls})")
            r0, b0 = _checks(log)
            w0 = caller.waits
            single = [caller.one() for _ in range(calls)]
            r1, b1 = _checks(log, r0 + b0 + calls)
            latency = {"n": calls, "p50": percentile(single, 50),
                       "p99": percentile(single, 99), "revision_checks": r1 - r0,
                       "builds": b1 - b0, "waits": caller.waits - w0}
            loads = []
            for c in clients:
                _say(f"3/3 {c} concurrent clients, {calls} calls, one worker "
                     f"({THREADS} threads)")
                loads.append(throughput(caller, c, calls, peer, log))
                _say(f"    {loads[-1]['calls_per_s']:.0f} calls/s")
    finally:
        if not keep:
            fleet.delete()
    best = max(loads, key=lambda x: x["calls_per_s"])
    result = {
        "date": utc_now(), "fresh_s": DEFAULT_FRESH, "period_s": PERIOD_S,
        "fleet": {"ports": instances * per_instance, "instances": instances,
                  "ports_per_instance": per_instance, "ports_reused": fleet.reused,
                  "setup_s": fleet_s, "kept": keep},
        "burst": burst, "single": latency, "concurrent": loads,
        "calls_per_s": best["calls_per_s"],
        "guests_per_worker": best["calls_per_s"] * PERIOD_S,
        "service_bound_calls_per_s": 1000 / best["service_cpu_ms_per_call"]
        if best["service_cpu_ms_per_call"] > 0 else None,
    }
    print(report(result))
    return result


def report(r: dict[str, Any]) -> str:
    b, s, f = r["burst"], r["single"], r["fleet"]
    rows = [
        ["nova's calls for one drive, first to last",
         f"{b['span_ms']['p50']:.0f} ms (max {b['span_ms']['max']:.0f})",
         f"{b['drives']} drives, {b['calls_per_drive']:g} calls each (nova's code); "
         f"fresh {r['fresh_s']:g} s = {r['fresh_s'] * 1000 / max(b['span_ms']['max'], 1):.0f}"
         "x the longest"],
        ["one call past fresh, p50 / p99", f"{s['p50']:.1f} / {s['p99']:.1f} ms",
         f"n={s['n']}, {f['ports']} ports in Neutron, {f['ports_per_instance']} per "
         f"instance; {s['revision_checks']} revision checks, {s['builds']} rebuilt"],
    ]
    for k in r["concurrent"]:
        rows.append([f"{k['clients']} clients, one worker",
                     f"{k['calls_per_s']:.0f} calls/s",
                     f"p50 {k['ms']['p50']:.0f} / p99 {k['ms']['p99']:.0f} ms; CPU per call: "
                     f"service {k['service_cpu_ms_per_call']:.1f} ms, Neutron "
                     f"{k['neutron_cpu_ms_per_call']:.1f} ms"
                     + (f"; {k['waits']} calls waited for fresh (too few instances: "
                        "bound by the waits)" if k["waits"] else "")])
    rows.append([f"guests one worker serves (1 read / {r['period_s']} s)",
                 f"{r['guests_per_worker']:,.0f}",
                 f"{r['calls_per_s']:.0f} calls/s x {r['period_s']} s; nova's metadata API "
                 "and its cache not included"])
    if r["service_bound_calls_per_s"]:
        rows.append(["the service's own CPU bound, one worker",
                     f"{r['service_bound_calls_per_s']:.0f} calls/s",
                     f"= {r['service_bound_calls_per_s'] * r['period_s']:,.0f} guests if "
                     "Neutron kept up (one core per worker)"])
    return table(["measure", "figure", "note"], rows)
