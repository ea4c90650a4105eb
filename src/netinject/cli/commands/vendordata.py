"""netinject vendordata serve: nova's DynamicJSON vendordata target."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from ...errors import UsageError

_LISTEN = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})", re.ASCII)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "vendordata", help="the vendordata service nova calls while building config drives",
        description="nova's DynamicJSON vendordata target: for each instance nova builds a "
                    "config drive for, ask Glance for the image's support_inject_ip, read "
                    "the instance's ports, subnets and networks in Neutron, keep the NIC "
                    "index map on the port tags, and answer the rendered files; nova puts "
                    "the answer in openstack/<version>/vendor_data2.json (key: the "
                    "target's name, which must be 'netinject'). See docs/operator-guide.md "
                    "for nova.conf.")
    vsub = p.add_subparsers(dest="vendordata_command", metavar="COMMAND", required=True)
    s = vsub.add_parser(
        "serve", help="run the service (gunicorn, threaded workers)",
        description="Run the vendordata service with gunicorn. For production, run the WSGI "
                    "application 'netinject.openstack.wsgi:application()' under your own "
                    "gunicorn or uwsgi (settings from NETINJECT_* variables; see "
                    "docs/operator-guide.md); this command is the same thing with the "
                    "settings as options.",
        epilog="Logs one line per built answer and every refusal or failure, with the "
               "instance id, on stderr.")
    s.add_argument("--cloud", required=True, metavar="NAME",
                   help="clouds.yaml entry the service reads Neutron and Glance with (and "
                        "validates callers' tokens with)")
    s.add_argument("--listen", default="127.0.0.1:9977", metavar="HOST:PORT",
                   help="address to listen on (default: %(default)s)")
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes (default: %(default)s)")
    s.add_argument("--threads", type=int, default=8, metavar="N",
                   help="threads per worker (default: %(default)s)")
    s.add_argument("--roles", default="admin,service", metavar="LIST",
                   help="a caller's token must hold one of these roles (default: "
                        "%(default)s: nova's service user)")
    s.add_argument("--no-auth", action="store_true",
                   help="accept callers without a Keystone token (off by default; only for "
                        "a service nova's hosts alone can reach)")
    s.add_argument("--memcached", metavar="HOST:PORT,...",
                   help="memcached servers for the validated-token cache (shared by workers "
                        "and replicas; default: each worker caches its own)")
    s.add_argument("--deadline", type=float, default=4.0, metavar="SECONDS",
                   help="answer within this time, or 504 (default: %(default)s, under "
                        "nova's 5 s vendordata_dynamic_read_timeout)")
    s.add_argument("--fresh", type=float, default=5.0, metavar="SECONDS",
                   help="serve an answer from memory this long before checking Neutron's "
                        "revision numbers again: covers nova's calls for one drive; a "
                        "metadata-API read past it sees a hot-plugged port or a subnet "
                        "change (default: %(default)s, service.DEFAULT_FRESH)")
    s.add_argument("--max-builds", type=int, default=64, metavar="N",
                   help="answers being built or queued at once, per worker process; a call "
                        "that needs one more gets 503 with Retry-After at once (default: "
                        "%(default)s)")
    s.add_argument("--read-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="a request's headers and body must arrive whole within this time "
                        "(one deadline, not per read), else 408; each request is read "
                        "whole before a thread handles it, bodies over 1 MiB get 413 "
                        "(default: %(default)s)")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from gunicorn.app.base import BaseApplication

    from ...openstack.server import worker_class
    from ...openstack.service import Settings
    from ...openstack.wsgi import make_app

    m = _LISTEN.fullmatch(args.listen)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise UsageError(f"--listen: {args.listen!r} is not HOST:PORT")
    for name in ("workers", "threads"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}: must be at least 1")
    if not 0 < args.deadline <= 60 or args.fresh < 0:
        raise UsageError("--deadline must be in (0, 60] seconds and --fresh >= 0")
    if args.max_builds < 1:
        raise UsageError("--max-builds: must be at least 1")
    if not 0 < args.read_timeout <= 300:
        raise UsageError("--read-timeout must be in (0, 300] seconds")
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    if not roles and not args.no_auth:
        raise UsageError("--roles: give at least one role")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(cloud=args.cloud, deadline=args.deadline, fresh=args.fresh,
                        max_builds=args.max_builds)
    # Built here, before the workers fork: a bad --cloud fails now, with exit 2.
    app = make_app(settings, auth=not args.no_auth, roles=roles, memcached=args.memcached)

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            # gunicorn's gthread worker, reading each request whole (within
            # --read-timeout, bodies up to 1 MiB) before a thread sees it.
            worker = worker_class(args.read_timeout)
            for key, value in (("bind", args.listen), ("workers", args.workers),
                               ("threads", args.threads), ("worker_class", worker),
                               ("accesslog", "-"), ("timeout", 30),
                               ("proc_name", "netinject-vendordata")):
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    print(f"netinject: vendordata service for cloud {args.cloud!r} on http://{args.listen}/ "
          f"({args.workers} worker(s) x {args.threads} thread(s), auth "
          f"{'off' if args.no_auth else 'keystone, roles ' + ','.join(roles)})",
          file=sys.stderr)
    Server().run()
    return 0
