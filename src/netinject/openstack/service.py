"""The vendordata service's logic, apart from HTTP: one nova request in, one answer out.

For a request it asks Glance for the image's ``support_inject_ip`` (a legacy image gets
``{}`` at once), lists the instance's ports with their subnets and networks in Neutron,
allocates NIC indexes on the port tags, and renders the payload.

Idempotent and fast: nova calls once per metadata version for one drive (5 times on Zed,
6 from Epoxy) and again on every metadata-service GET. An answer is kept per instance,
keyed by the revision_number of every port, subnet and network it was built from:

* within ``fresh`` seconds of being built or checked, it is served from memory (nova's
  calls for one drive come within a second or two);
* after that, one Neutron listing and a Glance read check it: same revisions, same
  answer (no rendering, no tag writes); different, rebuilt.

Subnets, networks and images are kept the same way (``fresh`` seconds; many instances
share them), so a new instance on known networks costs one Glance-free Neutron listing
of its ports. The NIC map's tags are written right after the answer, not before it: the
map is a pure function of the ports Neutron returned, so the answer cannot depend on
whether the write has landed.

The service holds no state a replica needs (the NIC map lives on the port tags), so any
number of replicas can run behind a load balancer; each has its own cache.

Never past nova's read timeout: every answer comes within ``deadline`` seconds (default
4, under nova's default 5). A build that takes longer is answered 504 (nova stores
``{}`` and the guest keeps DHCP) and goes on in the background, so the next call finds
it in the cache. Neutron or Glance failing is a 502; bad Neutron data a 422 naming the
port or subnet field; the reason is logged with the instance id.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput, NetinjectError
from ..naming import PortsPattern
from ..policy import PROPERTY, inject_enabled
from ..render import Options
from . import cloud, nicmap
from .document import Request, document, instance, payload

LOG = logging.getLogger("netinject.vendordata")

_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                   r"[0-9a-fA-F]{12}", re.ASCII)
_IDENT = re.compile(r"[A-Za-z0-9._:-]{1,255}", re.ASCII)


@dataclass(frozen=True)
class Settings:
    cloud: str
    deadline: float = 4.0
    fresh: float = 60.0
    api_timeout: float = 3.0
    max_entries: int = 10000
    workers: int = 8
    options: Options = field(default_factory=Options)


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    how: str  # for the log and the benchmark: built, cached, revalidated, legacy, error

    @property
    def ok(self) -> bool:
        return self.status == 200


class BadRequest(NetinjectError):
    pass


@dataclass
class _Entry:
    image_id: str
    revisions: tuple[tuple[str, int], ...]
    body: dict[str, Any]
    checked: float
    port_ids: frozenset[str] = frozenset()


def parse_request(body: Any) -> tuple[Request, str]:
    """nova's POST body -> (request, image id); BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("the body is not a JSON object")
    iid = body.get("instance-id")
    if not isinstance(iid, str) or not _UUID.fullmatch(iid):
        raise BadRequest(f"instance-id: {iid!r} is not a uuid")
    image = body.get("image-id")
    if image is None or image == "":
        image = ""  # boot from volume: nova sends no image
    elif not isinstance(image, str) or not _IDENT.fullmatch(image):
        raise BadRequest(f"image-id: {image!r} is not an image id")
    host = body.get("hostname")
    if host is not None and not isinstance(host, str):
        raise BadRequest(f"hostname: {host!r} is not a string")
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
        self._flights: dict[str, tuple[Future[Answer], float]] = {}
        self._pool = ThreadPoolExecutor(max_workers=settings.workers,
                                        thread_name_prefix="vendordata")
        # Fan-out calls and tag writes (never waits on _pool: no deadlock).
        self._io = ThreadPoolExecutor(max_workers=2 * settings.workers,
                                      thread_name_prefix="vendordata-io")
        self._objs: OrderedDict[tuple[str, str], tuple[float, Mapping[str, Any]]] = \
            OrderedDict()
        self._writes: set[Future[None]] = set()

    def conn(self) -> Any:
        with self._lock:
            if self._conn is None:
                self._conn = self._connect(self.settings.cloud, self.settings.api_timeout)
            return self._conn

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._io.shutdown(wait=False, cancel_futures=True)

    def handle(self, body: Any) -> Answer:
        started = time.monotonic()
        try:
            req, image_id = parse_request(body)
        except BadRequest as exc:
            LOG.warning("bad request: %s", exc)
            return Answer(400, {"error": str(exc)}, "error")
        with self._lock:
            entry = self._cache.get(req.instance_id)
            if (entry is not None and entry.image_id == image_id
                    and started - entry.checked < self.settings.fresh):
                self._cache.move_to_end(req.instance_id)
                return Answer(200, entry.body, "cached")
            found = self._flights.get(req.instance_id)
            if found is None:
                found = (self._pool.submit(self._build, req, image_id, entry), started)
                self._flights[req.instance_id] = found
                found[0].add_done_callback(functools.partial(self._landed, req.instance_id))
        flight, since = found
        # A call that joins a build under way waits only for what is left of the
        # build's own deadline: nova's 5-6 calls for one drive cost one deadline, not
        # one each, when Neutron or Glance hangs.
        try:
            answer = flight.result(timeout=max(0.0, self.settings.deadline
                                               - (time.monotonic() - since)))
        except FutureTimeout:
            LOG.warning("instance %s: no answer within %.1f s (Neutron or Glance slow); "
                        "answering 504, the build goes on for the next call",
                        req.instance_id, self.settings.deadline)
            return Answer(504, {"error": f"no answer within {self.settings.deadline} s"},
                          "error")
        return answer

    def _landed(self, instance_id: str, _done: Future[Answer]) -> None:
        with self._lock:
            self._flights.pop(instance_id, None)

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
            LOG.warning("instance %s: %s", req.instance_id, exc)
            return Answer(502, {"error": str(exc)}, "error")
        except InvalidInput as exc:
            reasons = [str(e) for e in exc.errors]
            LOG.warning("instance %s: invalid Neutron data: %s", req.instance_id,
                        "; ".join(reasons))
            return Answer(422, {"error": "invalid Neutron data", "fields": reasons},
                          "error")
        except Exception as exc:  # a bug must not take the service down: nova gets {}
            LOG.exception("instance %s: unexpected error", req.instance_id)
            return Answer(500, {"error": f"{type(exc).__name__}: {exc}"}, "error")
        LOG.info("instance %s: %s in %.0f ms", req.instance_id, answer.how,
                 (time.monotonic() - t0) * 1000)
        return answer

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
        [image] = self._objects("image", [image_id],
                                lambda c, ids: [cloud.image(c, ids[0])], conn)
        if not inject_enabled(cloud.image_properties(image), {}):
            return self._legacy(req, image_id, f"image {image_id} has no {PROPERTY}=true")
        ports = cloud.ports(conn, req.instance_id)
        subnet_ids, network_ids = cloud.referenced(ports)
        # Subnets and networks at once (each a Neutron round trip when not in memory).
        nets = self._io.submit(self._objects, "network", network_ids, cloud.networks, conn)
        subnets = self._objects("subnet", subnet_ids, cloud.subnets, conn)
        snap = cloud.Snapshot(tuple(ports), tuple(subnets), tuple(nets.result()))
        now = time.monotonic()
        # (A legacy answer, {}, is never reused for an image that now has the property.)
        if (old is not None and old.image_id == image_id and old.body
                and old.revisions == snap.revisions):
            self._store(req.instance_id, _Entry(image_id, snap.revisions, old.body, now))
            return Answer(200, old.body, "revalidated")
        plan = nicmap.plan(req.instance_id,
                           [nicmap.PortTags.from_port(p) for p in snap.ports])
        # Validated before any tag is written: bad data changes nothing in Neutron.
        body = payload(instance(document(req, image, snap, plan.pattern)),
                       self.settings.options)
        entry = _Entry(image_id, snap.revisions, body, time.monotonic(),
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
        self._store(req.instance_id, _Entry(image_id, (), {}, time.monotonic()))
        return Answer(200, {}, "legacy")


def pattern_of(instance_id: str, snap: cloud.Snapshot) -> PortsPattern:
    """The NIC index map the tags give now (without writing): for the live commands."""
    return nicmap.plan(instance_id, [nicmap.PortTags.from_port(p) for p in snap.ports]).pattern
