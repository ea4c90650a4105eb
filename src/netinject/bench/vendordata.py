"""netinject bench vendordata: what the vendordata service costs nova, against the real
local peer (scripts/openstack-peer.sh: Keystone, Neutron, Glance, nova's own code).

1. nova's drive build (InstanceMetadata + ConfigDriveBuilder.make_drive, in nova's own
   Python), each build for a new instance with two ports: StaticJSON only (nova alone)
   against StaticJSON + DynamicJSON calling the service (5 calls per drive on Zed: the
   first builds the answer, the others come from memory). Rounds alternate.
2. One call at a time over HTTP with nova's real Keystone token: a cold call (a new
   instance: Glance, Neutron, tags, rendering) and a cached call (the same instance
   again), p50 and p99.
3. 50 instances' drives at once: 50 clients each make nova's 5 calls for its own new
   instance, against one worker process (gunicorn, threaded): requests per second.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..openstack.peer import Peer, Tenant, running_service, stand_in
from .stats import table

CALLS_PER_DRIVE = 5  # nova Zed: one per metadata version directory


def _say(text: str) -> None:
    print(f"bench vendordata: {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


class Fixture:
    """Two networks with their subnets and an image in the real services (the peer's
    tenant), and instances with a port on each, made on demand and deleted at the end."""

    def __init__(self) -> None:
        self.tenant = Tenant.open()
        self.project = self.tenant.project_id
        tag = uuid.uuid4().hex[:6]
        self.nets = [self.tenant.network(f"bench-{tag}-{n}", mtu=1450) for n in range(2)]
        for n, net in enumerate(self.nets):
            self.tenant.subnet(net, ip_version=4, cidr=f"10.{77 + n}.0.0/16",
                               gateway_ip=f"10.{77 + n}.0.1", dns_nameservers=["192.0.2.53"],
                               host_routes=[{"destination": f"198.51.{100 + n}.0/24",
                                             "nexthop": f"10.{77 + n}.0.254"}])
        self.image = self.tenant.image(inject=True)

    def instance(self) -> tuple[str, list[str]]:
        iid = str(uuid.uuid4())
        return iid, [self.tenant.port(net, iid).id for net in self.nets]

    def instances(self, n: int) -> list[tuple[str, list[str]]]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _i: self.instance(), range(n)))

    def close(self) -> None:
        self.tenant.close()


def drive_overhead(peer: Peer, fx: Fixture, url: str, rounds: int, per_round: int
                   ) -> dict[str, Any]:
    # A reference target answering {} at once: what nova's own calls cost.
    with stand_in() as empty:
        return _drive_overhead(peer, fx, url, empty, rounds, per_round)


def _drive_overhead(peer: Peer, fx: Fixture, url: str, empty: str, rounds: int,
                    per_round: int) -> dict[str, Any]:
    """nova's InstanceMetadata + make_drive (where the vendordata calls happen) per
    contender, interleaved build by build in one nova process per round."""
    conf = peer.nova_conf("bench", url)
    contenders = {"nova alone": [], "nova + empty target": [f"netinject@{empty}"],
                  "nova + netinject": [f"netinject@{url}"]}
    times: dict[str, list[float]] = {label: [] for label in contenders}
    whole: dict[str, list[float]] = {label: [] for label in contenders}
    for r in range(rounds):
        insts = fx.instances(len(contenders) * (per_round + 1))
        labels = [label for _ in range(per_round + 1) for label in contenders]
        builds = [{"instance": iid, "project": fx.project, "image": fx.image.id,
                   "hostname": f"bench-{n}", "ports": ports, "targets": contenders[label],
                   "out": str(peer.state / f"bench-{n}.iso")}
                  for n, ((iid, ports), label) in enumerate(zip(insts, labels, strict=True))]
        results = peer.build_drives(conf, builds)
        bad = [b["error"] for b in results if b["error"]]
        if bad:
            raise RuntimeError(f"nova's drive build failed: {bad[0]}")
        # The first build of each contender warms nova up (lazy imports, sessions).
        for n, (label, res) in enumerate(zip(labels, results, strict=True)):
            if n >= len(contenders):
                times[label].append(res["drive_seconds"])
                whole[label].append(res["seconds"])
        _say(f"round {r + 1}/{rounds}: make_drive " + ", ".join(
            f"{label} {statistics.median(t[-per_round:]) * 1000:.0f} ms"
            for label, t in times.items()))
    for p in peer.state.glob("bench-*.iso"):
        p.unlink()

    def med(d: dict[str, list[float]], label: str) -> float:
        return statistics.median(d[label])
    a, w = med(times, "nova alone"), med(times, "nova + netinject")
    wa, ww = med(whole, "nova alone"), med(whole, "nova + netinject")
    return {"runs_each": len(times["nova alone"]),
            "nova_alone_s": a, "nova_with_empty_target_s": med(times, "nova + empty target"),
            "nova_with_netinject_s": w, "added_s": w - a, "added_pct": (w - a) / a * 100,
            "whole_alone_s": wa, "whole_with_netinject_s": ww,
            "whole_with_empty_target_s": med(whole, "nova + empty target"),
            "whole_added_pct": (ww - wa) / wa * 100,
            "raw": {"make_drive": times, "whole": whole}}


def call_latency(url: str, token: str, fx: Fixture, cold_n: int, cached_n: int
                 ) -> dict[str, Any]:
    import requests

    session = requests.Session()
    headers = {"X-Auth-Token": token, "User-Agent": "openstack-nova-vendordata"}

    def call(iid: str) -> float:
        t0 = time.perf_counter()
        r = session.post(url, json={"instance-id": iid, "image-id": fx.image.id,
                                    "hostname": "bench"}, headers=headers, timeout=10)
        took = time.perf_counter() - t0
        if r.status_code != 200 or not r.json():
            raise RuntimeError(f"the service answered {r.status_code}: {r.text[:300]}")
        return took * 1000

    insts = fx.instances(cold_n)
    call(insts[0][0])  # the service's first call fetches its own Keystone token
    cold = []
    for iid, _ in insts[1:]:
        # Spaced as nova's drive builds are: each call's tag writes land before the next
        # (the peer's Neutron is one API worker on SQLite; they would queue).
        time.sleep(0.3)
        cold.append(call(iid))
    cached = [call(insts[0][0]) for _ in range(cached_n)]
    return {"cold_ms": {"p50": percentile(cold, 50), "p99": percentile(cold, 99),
                        "n": len(cold)},
            "cached_ms": {"p50": percentile(cached, 50), "p99": percentile(cached, 99),
                          "n": len(cached)}}


def concurrent(url: str, token: str, fx: Fixture, instances: int) -> dict[str, Any]:
    import requests

    insts = fx.instances(instances)
    local = threading.local()
    start = threading.Barrier(instances)

    def drive(iid: str) -> float:
        if not hasattr(local, "s"):
            local.s = requests.Session()
        start.wait()
        t0 = time.perf_counter()
        for _ in range(CALLS_PER_DRIVE):
            r = local.s.post(url, json={"instance-id": iid, "image-id": fx.image.id},
                             headers={"X-Auth-Token": token}, timeout=30)
            if r.status_code != 200:
                raise RuntimeError(f"the service answered {r.status_code}: {r.text[:300]}")
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(instances) as pool:
        per_drive = list(pool.map(drive, [iid for iid, _ in insts]))
    wall = time.perf_counter() - t0
    total = instances * CALLS_PER_DRIVE
    # The same clients again: every answer is in memory now (the service alone, without
    # Neutron in the way): metadata-service GETs look like this.
    start = threading.Barrier(instances)
    t1 = time.perf_counter()
    with ThreadPoolExecutor(instances) as pool:
        list(pool.map(drive, [iid for iid, _ in insts]))
    cached_wall = time.perf_counter() - t1
    return {"instances": instances, "requests": total, "wall_s": wall,
            "requests_per_s": total / wall,
            "drive_calls_s": {"p50": percentile(per_drive, 50),
                              "p99": percentile(per_drive, 99)},
            "cached_requests_per_s": total / cached_wall}


def run(rounds: int = 4, per_round: int = 8, cold: int = 40, cached: int = 1000,
        instances: int = 50, workdir: Path | None = None) -> dict[str, Any]:
    import openstack

    peer = Peer.find()
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(peer.clouds_yaml)
    _say(f"peer: {peer.state} (Keystone, Neutron, Glance; nova's code in {peer.root})")
    fx = Fixture()
    log = (workdir or peer.state) / "bench-service.log"
    try:
        with running_service(log, threads=16) as url:
            token = str(openstack.connect(cloud="nova").session.get_token())
            _say(f"1/3 nova's drive build with and without the service ({rounds} rounds "
                 f"x {per_round} drives each)")
            drive = drive_overhead(peer, fx, url, rounds, per_round)
            _say(f"2/3 single calls: {cold} cold, {cached} cached")
            calls = call_latency(url, token, fx, cold, cached)
            _say(f"3/3 {instances} drives at once, one worker")
            load = concurrent(url, token, fx, instances)
    finally:
        fx.close()
    result = {"drive": {k: v for k, v in drive.items() if k != "raw"}, "calls": calls,
              "concurrent": load, "raw": drive["raw"]}
    print(report(result))
    return result


def report(r: dict[str, Any]) -> str:
    d, c, k = r["drive"], r["calls"], r["concurrent"]
    e = d["nova_with_empty_target_s"] - d["nova_alone_s"]
    we = d["whole_with_empty_target_s"] - d["whole_alone_s"]
    rows = [
        ["nova make_drive alone (median)", f"{d['nova_alone_s'] * 1000:.0f} ms",
         "InstanceMetadata + ConfigDriveBuilder.make_drive (iso9660)"],
        ["  + a target answering {} at once", f"{e * 1000:+.0f} ms",
         f"{e / d['nova_alone_s'] * 100:+.1f}%: nova's own 5 calls, any target"],
        ["  + netinject", f"{d['added_s'] * 1000:+.0f} ms",
         f"{d['added_pct']:+.1f}% (goal <= +10%)"],
        ["nova's whole drive path alone (median)", f"{d['whole_alone_s'] * 1000:.0f} ms",
         "+ the instance's network info from Neutron, as spawn builds it"],
        ["  + a target answering {} at once", f"{we * 1000:+.0f} ms",
         f"{we / d['whole_alone_s'] * 100:+.1f}%"],
        ["  + netinject", f"{(d['whole_with_netinject_s'] - d['whole_alone_s']) * 1000:+.0f} ms",
         f"{d['whole_added_pct']:+.1f}%"],
        ["cold call p50 / p99",
         f"{c['cold_ms']['p50']:.1f} / {c['cold_ms']['p99']:.1f} ms",
         f"n={c['cold_ms']['n']}, a new instance, with nova's token"],
        ["cached call p50 / p99",
         f"{c['cached_ms']['p50']:.2f} / {c['cached_ms']['p99']:.2f} ms",
         f"n={c['cached_ms']['n']} (goal p99 <= 5 ms)"],
        [f"{k['instances']} drives at once (5 calls each), 1 worker",
         f"{k['requests_per_s']:.0f} requests/s",
         f"{k['requests']} requests in {k['wall_s']:.2f} s; a drive's calls p50 "
         f"{k['drive_calls_s']['p50'] * 1000:.0f} ms, p99 "
         f"{k['drive_calls_s']['p99'] * 1000:.0f} ms (the peer's Neutron: one worker, "
         "SQLite)"],
        [f"{k['instances']} clients again, answers in memory",
         f"{k['cached_requests_per_s']:.0f} requests/s", "the service alone, one worker"],
    ]
    return table(["measure", "figure", "note"], rows)
