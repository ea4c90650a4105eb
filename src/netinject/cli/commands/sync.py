"""netinject sync: a change of the instance's network into the running guest."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ...render import Options, Style
from ._args import add_input_args, input_paths


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sync", help="deliver a network change (routes, DNS, MTU, addresses) to the running "
                     "guest through qemu-guest-agent",
        description="Render the instance's files from its document or from the live cloud "
                    "(the current Neutron data), compare them with what the running guest "
                    "has (read through qemu-guest-agent: its stack, the manifest its agent "
                    "last applied, its files), and when they differ apply the change as one "
                    "transaction (netinject-guest apply, agent 0.2.0 or newer: the files "
                    "installed, the changed NICs brought up through the image's stack and "
                    "checked, everything undone on a failure). Prints what changes: files "
                    "(added, changed, removed), and per NIC the addresses, routes and DNS "
                    "servers added or removed, the MTU, NICs added or removed. With nothing "
                    "to change the guest is not touched.",
        epilog="Exit status: 0 applied, nothing to change, or --dry-run; 1 the guest did not "
               "take the change (its files are as the message says: unchanged, partly "
               "updated or unknown; a busy guest says 'try again'), or no agent, an agent "
               "older than 0.2.0, the guest agent or the cloud unreachable; 2 bad input or "
               "usage (the wrong guest for the instance among them). See "
               "docs/operator-guide.md.")
    add_input_args(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--qga", metavar="SOCKET",
                     help="qemu-guest-agent socket (host end of org.qemu.guest_agent.0)")
    how.add_argument("--libvirt", metavar="DOMAIN",
                     help="libvirt domain name: talk to the guest agent through libvirt")
    p.add_argument("--libvirt-uri", default="qemu:///system", metavar="URI",
                   help="libvirt connection URI (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="show what would change (with each file's unified diff); read the "
                        "guest only, change nothing")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show each changed file's unified diff")
    p.add_argument("--json", action="store_true", dest="as_json",
                   help="print one JSON object (the change, each file's diff, the outcome) "
                        "on stdout instead of the text")
    p.add_argument("--system-metadata-out", type=Path, metavar="FILE",
                   help="with an instance document: write its updated system metadata "
                        "(ports_pattern) as JSON once the guest has the config")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ... import hotplug, sync
    from ...errors import UsageError
    from ...hostio import check_output, write_atomic
    from ...qga import GuestAgent, LibvirtTransport
    from ._args import instance_from, live_form

    server = real = None
    if live_form(args, (args.instance, args.network_data),
                 "an instance document, --network-data,"):
        from ...openstack import live
        from ...openstack.document import instance as checked

        real = live.read(args.cloud, args.server, args.image, args.hostname)
        server = real.pinned()  # (the NIC map as the tags give it, in memory)
        if not server.snapshot.ports:
            raise UsageError(f"server {args.server} has no ports in Neutron (device_id)")
        instance, sysmeta = checked(server.document()), None
    else:
        if args.instance is None and args.network_data is None:
            raise UsageError("give an instance document (INSTANCE.json), --network-data, or "
                             "--cloud NAME --server ID")
        instance, sysmeta = instance_from(args)
    if args.system_metadata_out is not None:
        if sysmeta is None:
            raise UsageError("--system-metadata-out needs an instance document (with "
                             "--cloud the NIC map lives on the port tags)")
        check_output(args.system_metadata_out, "--system-metadata-out", input_paths(args))
    options = Options(Style(args.style))
    side = hotplug.GuestSide()
    out: dict[str, Any] = {}
    agent = (GuestAgent.unix(args.qga) if args.qga
             else GuestAgent(LibvirtTransport(args.libvirt, args.libvirt_uri)))
    with agent as ga:
        planned = sync.plan(ga, instance, options, side)
        out = sync.to_json(planned)
        text = sync.report(planned, diffs=args.dry_run or args.verbose)
        if not args.as_json:
            print("\n".join(text))
        if args.dry_run:
            out["outcome"] = None
            status = 0
            _say(args, "dry run: the guest was not touched")
        elif not planned.diff.changed:
            out["outcome"] = {"host": "unchanged", "guest": None,
                              "detail": "nothing to change: the guest was not touched"}
            status = 0
            _say(args, "nothing to change: the guest was not touched")
        else:
            result = sync.apply(ga, planned, options, side)
            status = 0 if result.outcome is hotplug.ApplyOutcome.APPLIED else 1
            out["outcome"] = {"host": result.outcome.value, "guest": result.guest,
                              "detail": result.detail,
                              "nics": {k: [n for n in result.said.get(k, "").split(",") if n]
                                       for k in ("added", "changed", "removed")}}
            _say(args, f"{result.outcome.value}: {hotplug.describe(result)}", status != 0)
    if status == 0 and not args.dry_run:
        if server is not None:
            out["neutron"] = _pin_tags(real, server, args)
        if args.system_metadata_out is not None:
            assert sysmeta is not None
            write_atomic(args.system_metadata_out, (json.dumps(
                sysmeta, indent=2, sort_keys=True) + "\n").encode())
    if args.as_json:
        print(json.dumps(out, indent=2, sort_keys=True))
    return status


def _say(args: argparse.Namespace, line: str, failed: bool = False) -> None:
    if args.as_json:
        return
    print(line, file=sys.stderr if failed else sys.stdout)


def _pin_tags(real: Any, server: Any, args: argparse.Namespace) -> list[str]:
    """The NIC map's tags the guest's config now relies on, written where Neutron lacks
    them (ports the vendordata service never saw, as it would write them); the writes
    in words."""
    from ...openstack import cloud, live

    tags = live.tag_changes(real.snapshot.ports, server.snapshot.ports)
    written = []
    for port_id, port_tags in sorted(tags.items()):
        try:
            cloud.set_tags(real.conn, port_id, port_tags)
        except cloud.CloudError as exc:
            raise cloud.CloudError(f"the guest has the config, but writing the NIC map to "
                                   f"port {port_id}'s tags failed: {exc}", exc.what,
                                   exc.status) from None
        written.append(f"port {port_id}: tags {','.join(sorted(port_tags))}")
        _say(args, f"Neutron: {written[-1]}")
    return written
