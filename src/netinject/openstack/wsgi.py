"""The vendordata service as a WSGI application (nova's DynamicJSON target).

Run it under any WSGI server, like the OpenStack API services::

    NETINJECT_CLOUD=netinject gunicorn --workers 2 --threads 8 \\
        --bind 127.0.0.1:9977 'netinject.openstack.wsgi:application()'

or with ``netinject vendordata serve`` (gunicorn, built in). Settings come from the
environment: NETINJECT_CLOUD (the clouds.yaml entry, required), NETINJECT_AUTH
(``keystone``, the default, or ``none``), NETINJECT_ROLES (roles a caller's token must
hold, comma-separated; default ``admin,service``), NETINJECT_DEADLINE, NETINJECT_FRESH
(seconds; see service.py), NETINJECT_MAX_BUILDS (builds under way or queued per process,
beyond which calls get 503; default 64), NETINJECT_MEMCACHED (``host:port,...``:
keystonemiddleware's token cache, shared by workers and replicas).

Under gunicorn, use netinject's worker (``--worker-class
netinject.openstack.server.Worker``, NETINJECT_READ_TIMEOUT): it reads each request
whole, within a deadline and a size limit, before a thread sees it (see server.py);
otherwise put a buffering proxy in front (docs/operator-guide.md).

Routes: ``POST /`` (any path: nova posts to the URL it is given) answers nova's
request; ``GET /healthcheck`` answers 200 without authentication, for load balancers.

Authentication: keystonemiddleware's ``auth_token`` validates the ``X-Auth-Token`` nova
sends when ``[vendordata_dynamic_auth]`` is set (a missing or invalid token is a 401),
using the service's own clouds.yaml credentials; the token must also carry one of the
roles (else 403). ``NETINJECT_AUTH=none`` turns all of that off, for a service reachable
only by nova's hosts: it is off by default and logged at start.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import UsageError
from .service import DEFAULT_FRESH, Settings, Vendordata

LOG = logging.getLogger("netinject.vendordata")

BODY_MAX = 1 << 20  # nova's body carries user-data (64 KiB at most, base64)
DEFAULT_ROLES = ("admin", "service")
ARRIVED = "netinject.arrived"
"""environ key: ``time.monotonic()`` when the request was read whole (set by
netinject's gunicorn worker); the service's deadline counts from it."""

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           413: "Payload Too Large", 422: "Unprocessable Entity",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _reply(start: StartResponse, status: int, body: object,
           retry_after: int | None = None) -> list[bytes]:
    data = json.dumps(body, sort_keys=True).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
               ("Cache-Control", "no-store")]
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    start(f"{status} {REASONS.get(status, 'Error')}", headers)
    return [data]


def is_healthcheck(environ: dict[str, Any]) -> bool:
    return bool(environ.get("REQUEST_METHOD", "GET") == "GET"
                and environ.get("PATH_INFO", "/").rstrip("/") == "/healthcheck")


class App:
    """The WSGI callable around a Vendordata (auth is a separate layer: see wrap_auth)."""

    def __init__(self, service: Vendordata, roles: tuple[str, ...] | None) -> None:
        self.service = service
        self.roles = roles  # None: no authentication (the explicit switch)

    def __call__(self, environ: dict[str, Any], start: StartResponse) -> list[bytes]:
        if is_healthcheck(environ):
            return _reply(start, 200, {"status": "ok"})
        if environ.get("REQUEST_METHOD", "GET") != "POST":
            return _reply(start, 405, {"error": "nova POSTs its request here"})
        if self.roles is not None:
            if environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed":
                return _reply(start, 401, {"error": "a valid X-Auth-Token is required"})
            held = {r.strip() for r in environ.get("HTTP_X_ROLES", "").split(",")}
            if not held & set(self.roles):
                LOG.warning("refused a caller without any of the roles %s (user %s)",
                            ",".join(self.roles), environ.get("HTTP_X_USER_NAME", "?"))
                return _reply(start, 403, {"error": "the token lacks the roles "
                                                    + ",".join(self.roles)})
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > BODY_MAX:
            return _reply(start, 413, {"error": f"body over {BODY_MAX} bytes"})
        raw = _read(environ["wsgi.input"], length)
        if raw is None:
            return _reply(start, 400, {"error": "the body ended early"})
        try:
            body = json.loads(raw)
        except ValueError:
            return _reply(start, 400, {"error": "the body is not JSON"})
        except RecursionError:
            return _reply(start, 400, {"error": "the body is nested too deeply"})
        arrived = environ.get(ARRIVED)
        answer = self.service.handle(
            body, arrived if isinstance(arrived, float) else None)
        return _reply(start, answer.status, answer.body, answer.retry_after)


def _read(stream: Any, length: int) -> bytes | None:
    """``length`` bytes of the body (None: it ended first, or the client went away)."""
    parts: list[bytes] = []
    got = 0
    try:
        while got < length:
            part = stream.read(length - got)
            if not part:
                return None
            parts.append(part)
            got += len(part)
    except OSError:
        return None
    return b"".join(parts)


def cloud_config(cloud_name: str) -> Any:
    """The clouds.yaml entry (UsageError, exit 2, when there is none): checked when the
    service starts, not on nova's first call."""
    import openstack.config

    try:
        return openstack.config.OpenStackConfig().get_one(cloud=cloud_name)
    except Exception as exc:
        raise UsageError(f"cloud {cloud_name!r}: {exc}") from None


def auth_conf(cloud_name: str, memcached: str | None = None) -> dict[str, Any]:
    """keystonemiddleware auth_token options from the service's clouds.yaml entry: the
    same credentials validate callers' tokens (the user needs the admin or service
    role in Keystone for that)."""
    region = cloud_config(cloud_name)
    auth = dict(region.auth)
    if "auth_url" not in auth:
        raise UsageError(f"cloud {cloud_name!r} has no auth_url")
    conf: dict[str, Any] = {
        "auth_type": region.config.get("auth_type") or "password",
        "www_authenticate_uri": auth["auth_url"],
        "delay_auth_decision": False,
        "interface": region.config.get("interface") or "public",
        "include_service_catalog": False,
        "token_cache_time": 300,
        "log_name": "netinject.vendordata.auth",
    }
    if region.region_name:
        conf["region_name"] = region.region_name
    if memcached:
        # Validated tokens shared by every worker and replica (keystonemiddleware's
        # in-process cache is per process, and deprecated).
        conf["memcached_servers"] = memcached
    conf.update({k: v for k, v in auth.items() if v is not None})
    return conf


def wrap_auth(app: WSGIApp, conf: dict[str, Any]) -> WSGIApp:
    from keystonemiddleware import auth_token

    wrapped: WSGIApp = auth_token.AuthProtocol(app, conf)
    return wrapped


def make_app(settings: Settings, auth: bool = True,
             roles: tuple[str, ...] = DEFAULT_ROLES, memcached: str | None = None) -> WSGIApp:
    cloud_config(settings.cloud)
    service = Vendordata(settings)
    if not auth:
        LOG.warning("authentication is OFF: any caller that reaches this service gets "
                    "answers (only for a service that nova's hosts alone can reach)")
        return App(service, None)
    inner = App(service, roles)
    authed = wrap_auth(inner, auth_conf(settings.cloud, memcached))

    def dispatch(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        if is_healthcheck(environ):
            return inner(environ, start)  # no token: for load balancers
        return authed(environ, start)
    return dispatch


def settings_from_env(env: dict[str, str] | None = None
                      ) -> tuple[Settings, bool, tuple[str, ...], str | None]:
    env = dict(os.environ if env is None else env)
    name = env.get("NETINJECT_CLOUD")
    if not name:
        raise UsageError("NETINJECT_CLOUD is not set (the clouds.yaml entry to use)")
    mode = env.get("NETINJECT_AUTH", "keystone")
    if mode not in ("keystone", "none"):
        raise UsageError(f"NETINJECT_AUTH: {mode!r} is not keystone or none")
    roles = tuple(r.strip() for r in env.get("NETINJECT_ROLES", ",".join(DEFAULT_ROLES))
                  .split(",") if r.strip())
    try:
        settings = Settings(cloud=name,
                            deadline=float(env.get("NETINJECT_DEADLINE", "4")),
                            fresh=float(env.get("NETINJECT_FRESH", str(DEFAULT_FRESH))),
                            max_builds=int(env.get("NETINJECT_MAX_BUILDS", "64")))
    except ValueError as exc:
        raise UsageError("NETINJECT_DEADLINE/NETINJECT_FRESH/NETINJECT_MAX_BUILDS: "
                         f"{exc}") from None
    if settings.max_builds < 1:
        raise UsageError("NETINJECT_MAX_BUILDS must be at least 1")
    if not 0 < settings.deadline <= 60 or settings.fresh < 0:
        raise UsageError(f"NETINJECT_DEADLINE must be in (0, 60] seconds and NETINJECT_FRESH "
                         f">= 0 (got {settings.deadline:g} and {settings.fresh:g})")
    return settings, mode == "keystone", roles, env.get("NETINJECT_MEMCACHED") or None


def application() -> WSGIApp:
    """The WSGI application configured from the environment (a factory: gunicorn's
    ``'netinject.openstack.wsgi:application()'``, uwsgi's ``--callable``)."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings, auth, roles, memcached = settings_from_env()
    return make_app(settings, auth, roles, memcached)
