"""The vendordata service's logic, apart from HTTP: one nova request in, one answer out.

For a request it asks Glance for the image's ``support_inject_ip`` (a legacy image gets
``{}`` at once), lists the instance's ports with their subnets and networks in Neutron,
allocates NIC indexes on the port tags, and renders the payload.

Idempotent and fast: nova calls once per metadata version for one drive (5 times on Zed,
6 from Epoxy) and again on every metadata-service GET. An answer is kept per instance,
keyed by the revision_number of every port, subnet and network it was built from:

* within ``fresh`` seconds of being built or checked, it is served from memory;
* after that, a revision check: one Neutron listing of the instance's ports (at the
  same time as the Glance read of the image, when that is not in memory), then its
  subnets and networks (at once, when not in memory): same revisions, same answer (no
  rendering, no tag writes); different, rebuilt.

Subnets, networks and images are kept the same way (``fresh`` seconds; many instances
share them), so a new instance on known networks costs one Glance-free Neutron listing
of its ports.

Why ``fresh`` defaults to 5 s (``DEFAULT_FRESH``). The service answers two callers:

* nova's drive build: 5 calls for one drive (6 from Epoxy), all inside nova's
  ``make_drive``: first call to last 9 ms p50, 10 ms at most on the peer (nova's own
  code; ``netinject bench vendordata --metadata-path``), so one drive still costs one
  build and 4 answers from memory, with a wide margin for a busy compute host;
* nova's metadata API, on every guest read of vendor_data2.json: the guest agent's
  ``sync`` on a hot-plug (again after 1, 2, 4, 8, 15 s until the new MAC is in the
  answer), on a NIC removal and on its drift timer (every 1800 s). There the answer
  must show what changed in Neutron: a port attached (nova sets its device_id before
  the NIC reaches the guest) or a subnet's DNS servers or routes. Past ``fresh`` every
  such read costs the revision check (p50 and p99 in docs/benchmarks.md), and sees the
  change (a check: 32 ms p50, 168 ms p99 with 1,000 ports in the peer's Neutron);
  within ``fresh`` of an earlier call for the same instance it may not, so a
  hot-plugged NIC shows at the guest's next retry at the latest (with 60 s, the old
  default, up to a minute later: as long as the guest waits for it).

A shorter window saves nothing more on the metadata path (a guest reads every 1800 s:
almost every read is a check anyway) and only risks a second build inside a slow
drive burst; a longer one delays hot-plugs.

The NIC map's tags are written right after the answer, not before it: the map is a pure
function of the ports Neutron returned, so the answer cannot depend on whether the
write has landed.

The service holds no state a replica needs (the NIC map lives on the port tags), so any
number of replicas can run behind a load balancer; each has its own cache.

Never past nova's read timeout: every answer comes within ``deadline`` seconds (default
4, under nova's default 5) of the request's arrival (``arrived``: netinject's gunicorn
worker says when the request was read whole, so time spent waiting for a thread counts).
A build that takes longer is answered 504 (nova stores ``{}`` and the guest keeps DHCP)
and goes on in the background, so the next call finds it in the cache. Neutron, Glance,
Keystone or the catalog failing is a 502 naming the call, not the reason; bad Neutron
data a 422 naming the port or subnet field; the reason is logged with the instance id.

Bounded: at most ``max_builds`` builds are under way or queued at once (a build runs on
after its 504, so a slow cloud would otherwise pile them up and make every later call
wait behind them). A call that needs one more, or that waited past the deadline before
it was handled, is answered 503 with Retry-After at once (nova stores ``{}``), logged at
most once a second with the count left out.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput, NetinjectError, quote
from ..model import Hostname
from ..policy import PROPERTY, inject_enabled
from ..render import Options
from . import cloud, nicmap
from .document import Request, document, instance, payload

LOG = logging.getLogger("netinject.vendordata")

_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                   r"[0-9a-fA-F]{12}", re.ASCII)
_IDENT = re.compile(r"[A-Za-z0-9._:-]{1,255}", re.ASCII)


DEFAULT_FRESH = 5.0
"""Seconds an answer is served from memory unchecked (see the module's docstring)."""


@dataclass(frozen=True)
class Settings:
    cloud: str
    deadline: float = 4.0
    fresh: float = DEFAULT_FRESH
    api_timeout: float = 3.0
    max_entries: int = 10000
    workers: int = 8
    max_builds: int = 64
    options: Options = field(default_factory=Options)


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    how: str  # for the log and the benchmark: built, cached, revalidated, legacy, error,
    # busy
    retry_after: int | None = None  # seconds (the Retry-After of a 503)

    @property
    def ok(self) -> bool:
        return self.status == 200


class BadRequest(NetinjectError):
    pass


class Throttled:
    """Warnings at most once per ``every`` seconds; the next line says how many were
    left out (a flood of refusals must not flood the log)."""

    def __init__(self, log: logging.Logger, every: float = 1.0) -> None:
        self.log = log
        self.every = every
        self._lock = threading.Lock()
        self._last = -math.inf
        self._skipped = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.every:
                self._skipped += 1
                return
            skipped, self._skipped, self._last = self._skipped, 0, now
        if skipped:
            msg, args = msg + " (%d more like it left out of the log)", (*args, skipped)
        self.log.warning(msg, *args)


@dataclass
class _Entry:
    image_id: str
    hostname: str | None
    revisions: tuple[tuple[str, int], ...]
    body: dict[str, Any]
    checked: float
    port_ids: frozenset[str] = frozenset()

    def answers(self, image_id: str, hostname: str | None) -> bool:
        """Built for what the answer depends on in nova's request (the instance id is
        the cache key; Glance and Neutron are checked by revision)."""
        return self.image_id == image_id and self.hostname == hostname


def parse_request(body: Any) -> tuple[Request, str]:
    """nova's POST body -> (request, image id); BadRequest naming the field (its value
    shortened, as FieldError does)."""
    if not isinstance(body, dict):
        raise BadRequest("the body is not a JSON object")
    iid = body.get("instance-id")
    if not isinstance(iid, str) or not _UUID.fullmatch(iid):
        raise BadRequest(f"instance-id: {quote(iid)} is not a uuid")
    image = body.get("image-id")
    if image is None or image == "":
        image = ""  # boot from volume: nova sends no image
    elif not isinstance(image, str) or not _IDENT.fullmatch(image):
        raise BadRequest(f"image-id: {quote(image)} is not an image id")
    host = body.get("hostname")
    if host is not None and not isinstance(host, str):
        raise BadRequest(f"hostname: {quote(host)} is not a string")
    if host:
        try:
            Hostname.parse(host)
        except ValueError as exc:
            raise BadRequest(f"hostname: {quote(host)} {exc}") from None
    import uuid

    return Request(str(uuid.UUID(iid)), host or None), image


class Vendordata:
    """Thread-safe: gunicorn's threaded workers call ``handle`` concurrently."""

    def __init__(self, settings: Settings,
                 connect: Callable[[str, float], Any] = cloud.connect) -> None:
        self.settings = settings
        self._connect = connect
        self._conn: Any = None
        # Reentrant: a done callback added to a finished future runs at once, in the
        # thread that adds it (which holds the lock).
        self._lock = threading.RLock()
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        # Builds under way or queued, by what they answer: (instance, image, hostname).
        self._flights: dict[tuple[str, str, str | None], tuple[Future[Answer], float]] = {}
        self._busy = Throttled(LOG)
        self._bad = Throttled(LOG)
        self._pool = ThreadPoolExecutor(max_workers=settings.workers,
                                        thread_name_prefix="vendordata")
        # Fan-out calls and tag writes (never waits on _pool: no deadlock).
        self._io = ThreadPoolExecutor(max_workers=2 * settings.workers,
                                      thread_name_prefix="vendordata-io")
        self._objs: OrderedDict[tuple[str, str], tuple[float, Mapping[str, Any]]] = \
            OrderedDict()
        self._writes: set[Future[None]] = set()
        self._closing = False

    def conn(self) -> Any:
        with self._lock:
            if self._conn is None:
                self._conn = self._connect(self.settings.cloud, self.settings.api_timeout)
            return self._conn

    def close(self) -> None:
        self._closing = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._io.shutdown(wait=False, cancel_futures=True)

    def handle(self, body: Any, arrived: float | None = None) -> Answer:
        """nova's request -> the answer, within ``deadline`` seconds of ``arrived``
        (``time.monotonic()`` when the request was read; default: now)."""
        started = time.monotonic() if arrived is None else arrived
        try:
            req, image_id = parse_request(body)
        except BadRequest as exc:
            self._bad.warning("bad request: %s", exc)
            return Answer(400, {"error": str(exc)}, "error")
        key = (req.instance_id, image_id, req.hostname)
        busy = ""
        with self._lock:
            entry = self._cache.get(req.instance_id)
            if (entry is not None and entry.answers(image_id, req.hostname)
                    and started - entry.checked < self.settings.fresh):
                self._cache.move_to_end(req.instance_id)
                return Answer(200, entry.body, "cached")
            found = self._flights.get(key)
            if found is None:
                waited = time.monotonic() - started
                if waited >= self.settings.deadline:
                    busy = f"the request waited {waited:.1f} s to be handled"
                elif len(self._flights) >= self.settings.max_builds:
                    busy = f"{len(self._flights)} builds are under way or queued"
                else:
                    found = (self._pool.submit(self._build, req, image_id, entry),
                             time.monotonic())
                    self._flights[key] = found
                    found[0].add_done_callback(functools.partial(self._landed, key))
        if found is None:
            return self._refuse_busy(req.instance_id, busy)
        flight, since = found
        # A call that joins a build under way waits only for what is left of the
        # build's own deadline (and of its own): nova's 5-6 calls for one drive cost
        # one deadline, not one each, when Neutron or Glance hangs.
        now = time.monotonic()
        try:
            answer = flight.result(timeout=max(0.0, self.settings.deadline
                                               - (now - min(since, started))))
        except FutureTimeout:
            LOG.warning("instance %s: no answer within %.1f s (Neutron or Glance slow); "
                        "answering 504, the build goes on for the next call",
                        req.instance_id, self.settings.deadline)
            return Answer(504, {"error": f"no answer within {self.settings.deadline} s"},
                          "error")
        return answer

    def _refuse_busy(self, instance_id: str, why: str) -> Answer:
        retry = max(1, math.ceil(self.settings.deadline))
        self._busy.warning("instance %s: busy (%s; at most %d at once): answering 503, "
                           "Retry-After %d s", instance_id, why, self.settings.max_builds,
                           retry)
        return Answer(503, {"error": f"busy: {why}; try again later"}, "busy",
                      retry_after=retry)

    def _landed(self, key: tuple[str, str, str | None], _done: Future[Answer]) -> None:
        with self._lock:
            self._flights.pop(key, None)

    def _store(self, instance_id: str, entry: _Entry) -> None:
        with self._lock:
            self._cache[instance_id] = entry
            self._cache.move_to_end(instance_id)
            while len(self._cache) > self.settings.max_entries:
                self._cache.popitem(last=False)

    def _build(self, req: Request, image_id: str, old: _Entry | None) -> Answer:
        t0 = time.monotonic()
        try:
            answer = self._build_unlogged(req, image_id, old)
        except cloud.CloudError as exc:
            # The reason (URLs, hosts, the SDK's words) only in the log.
            LOG.warning("instance %s: %s", req.instance_id, exc)
            return Answer(502, {"error": f"{exc.what} failed (the reason is in the "
                                         "service's log)"}, "error")
        except InvalidInput as exc:
            reasons = [str(e) for e in exc.errors]
            LOG.warning("instance %s: invalid Neutron data: %s", req.instance_id,
                        "; ".join(reasons))
            return Answer(422, {"error": "invalid Neutron data", "fields": reasons},
                          "error")
        except Exception:  # a bug must not take the service down: nova gets {}
            if self._closing:  # a build under way when the service stopped
                LOG.info("instance %s: the service stopped during the build",
                         req.instance_id)
                return Answer(503, {"error": "the service is stopping"}, "busy")
            LOG.exception("instance %s: unexpected error", req.instance_id)
            return Answer(500, {"error": "internal error (the reason is in the service's "
                                         "log)"}, "error")
        LOG.info("instance %s: %s in %.0f ms", req.instance_id, answer.how,
                 (time.monotonic() - t0) * 1000)
        return answer

    def _known(self, kind: str, ident: str) -> bool:
        """Whether ``_objects`` would answer ``ident`` from memory now."""
        with self._lock:
            hit = self._objs.get((kind, ident))
        return hit is not None and time.monotonic() - hit[0] < self.settings.fresh

    def _objects(self, kind: str, ids: list[str],
                 fetch: Callable[[Any, list[str]], list[Mapping[str, Any]]],
                 conn: Any) -> list[Mapping[str, Any]]:
        """Subnets, networks or images by id, from memory when read within ``fresh``
        seconds (many instances share them), the rest in one listing."""
        now = time.monotonic()
        found: dict[str, Mapping[str, Any]] = {}
        with self._lock:
            for ident in ids:
                hit = self._objs.get((kind, ident))
                if hit is not None and now - hit[0] < self.settings.fresh:
                    found[ident] = hit[1]
        missing = [i for i in ids if i not in found]
        if missing:
            fetched = fetch(conn, missing)
            with self._lock:
                for obj in fetched:
                    ident = str(obj.get("id"))
                    found[ident] = obj
                    self._objs[(kind, ident)] = (now, obj)
                while len(self._objs) > 4 * self.settings.max_entries:
                    self._objs.popitem(last=False)
        return [found[i] for i in ids if i in found]

    def _build_unlogged(self, req: Request, image_id: str, old: _Entry | None) -> Answer:
        conn = self.conn()
        if not image_id:
            return self._legacy(req, image_id, "no image (boot from volume)")
        # The revision check's first step, the instance's ports, goes out with the
        # Glance read when the image is not in memory (one round trip, not two); a
        # legacy image's answer then ignores the listing.
        listing = (None if self._known("image", image_id)
                   else self._io.submit(cloud.ports, conn, req.instance_id))
        try:
            [image] = self._objects("image", [image_id],
                                    lambda c, ids: [cloud.image(c, ids[0])], conn)
        except BaseException:
            if listing is not None:
                listing.cancel()
            raise
        if not inject_enabled(cloud.image_properties(image), {}):
            return self._legacy(req, image_id, f"image {image_id} has no {PROPERTY}=true")
        ports = (cloud.ports(conn, req.instance_id) if listing is None
                 else listing.result())
        subnet_ids, network_ids = cloud.referenced(ports)
        # Subnets and networks at once (each a Neutron round trip when not in memory).
        nets = self._io.submit(self._objects, "network", network_ids, cloud.networks, conn)
        subnets = self._objects("subnet", subnet_ids, cloud.subnets, conn)
        snap = cloud.Snapshot(tuple(ports), tuple(subnets), tuple(nets.result()))
        now = time.monotonic()
        # (A legacy answer, {}, is never reused for an image that now has the property.)
        if (old is not None and old.answers(image_id, req.hostname) and old.body
                and old.revisions == snap.revisions):
            self._store(req.instance_id, _Entry(image_id, req.hostname, snap.revisions,
                                                old.body, now))
            return Answer(200, old.body, "revalidated")
        plan = nicmap.plan(req.instance_id,
                           [nicmap.PortTags.from_port(p) for p in snap.ports])
        # Validated before any tag is written: bad data changes nothing in Neutron.
        body = payload(instance(document(req, image, snap, plan.pattern)),
                       self.settings.options)
        entry = _Entry(image_id, req.hostname, snap.revisions, body, time.monotonic(),
                       frozenset(str(p.get("id")) for p in snap.ports))
        self._store(req.instance_id, entry)
        if plan.tags:
            # The map is a pure function of the ports Neutron returned, so the answer
            # does not wait for the tags: they are written right after it, and a replica
            # that reads the ports untagged meanwhile computes the same map.
            self._track(self._io.submit(self._persist, conn, req.instance_id, plan, entry))
        return Answer(200, body, "built")

    def _persist(self, conn: Any, instance_id: str, plan: nicmap.Plan, entry: _Entry) -> None:
        try:
            with ThreadPoolExecutor(max_workers=min(8, len(plan.tags))) as pool:
                list(pool.map(lambda item: cloud.set_tags(conn, item[0], item[1]),
                              sorted(plan.tags.items())))
            # Tagging bumped the ports' revision_number: key the answer by the new ones.
            ports = cloud.ports(conn, instance_id)
        except cloud.CloudError as exc:
            LOG.warning("instance %s: writing the NIC map to the port tags failed (%s); "
                        "the next call builds the answer again", instance_id, exc)
            with self._lock:
                if self._cache.get(instance_id) is entry:
                    del self._cache[instance_id]
            return
        revisions = cloud.Snapshot(tuple(ports), (), ()).revisions
        kept = tuple(r for r in entry.revisions if r[0] not in entry.port_ids)
        with self._lock:
            if self._cache.get(instance_id) is entry:
                entry.revisions = tuple(sorted(kept + revisions))

    def _track(self, future: Future[None]) -> None:
        with self._lock:
            self._writes.add(future)
        future.add_done_callback(self._untrack)

    def _untrack(self, future: Future[None]) -> None:
        with self._lock:
            self._writes.discard(future)

    def settle(self, timeout: float = 30.0) -> None:
        """Wait for the tag writes under way (tests; a graceful stop)."""
        with self._lock:
            pending = list(self._writes)
        for future in pending:
            future.result(timeout)

    def _legacy(self, req: Request, image_id: str, why: str) -> Answer:
        LOG.info("instance %s: %s: answering {} (the guest keeps DHCP)", req.instance_id, why)
        self._store(req.instance_id, _Entry(image_id, req.hostname, (), {}, time.monotonic()))
        return Answer(200, {}, "legacy")

