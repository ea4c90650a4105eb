"""netinject hotplug attach|detach: a NIC's config into the guest first, then the NIC."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...render import Options, Style


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hp = sub.add_parser(
        "hotplug", help="hot-plug a NIC: config and udev rule into the guest first, then attach",
        description="NIC hot-plug through qemu-guest-agent: the guest's files (all NICs) are "
                    "re-rendered and installed in the running guest as one transaction "
                    "(netinject-guest apply, which the image must carry) before the NIC "
                    "is attached, so it comes up with its static address without DHCP. "
                    "On a lost reply the guest is asked what happened and the files are "
                    "read back: the error says truthfully whether they changed.")
    hsub = hp.add_subparsers(dest="hotplug_cmd", metavar="ACTION", required=True)
    for action in ("attach", "detach"):
        a = hsub.add_parser(action, help=f"{action} a NIC",
                            description="Allocate the NIC index (ports_pattern, lowest "
                                        "free), install the guest's files in one "
                                        "transaction, then attach the NIC and wait for its "
                                        "address. Exit 1 (nothing attached) unless every "
                                        "file was installed; with --allow-dhcp-fallback the "
                                        "NIC is attached anyway (exit 0, a warning)."
                            if action == "attach" else
                            "Detach the port's NIC, rewrite the guest's files without it "
                            "and free its index in ports_pattern.")
        a.add_argument("instance", type=Path, metavar="INSTANCE.json",
                       help="the instance document with its current ports")
        if action == "attach":
            a.add_argument("--port", type=Path, required=True, metavar="PORT.json",
                           help="the new Neutron port (object, or {\"port\": {...}})")
            a.add_argument("--subnet", type=Path, action="append", default=[],
                           metavar="SUBNET.json", help="its subnet, if not in INSTANCE.json")
            a.add_argument("--network", type=Path, action="append", default=[],
                           metavar="NETWORK.json", help="its network, if not in INSTANCE.json")
            a.add_argument("--tap", metavar="IFNAME",
                           help="host tap device for the NIC (default: tap<index>)")
            a.add_argument("--allow-dhcp-fallback", action="store_true",
                           help="attach even if the agent cannot take the config (the "
                                "guest then needs DHCP; exit 0 with a warning)")
            a.add_argument("--timeout", type=float, default=60.0,
                           help="seconds to wait for the address (default 60)")
        else:
            a.add_argument("--port-id", required=True, metavar="UUID")
        a.add_argument("--qga", metavar="SOCKET",
                       help="qemu-guest-agent socket (host end of org.qemu.guest_agent.0); "
                            "with --libvirt the agent is reached through libvirt instead")
        how = a.add_mutually_exclusive_group(required=True)
        how.add_argument("--qmp", metavar="SOCKET", help="QEMU's QMP socket (needs --qga)")
        how.add_argument("--libvirt", metavar="DOMAIN",
                         help="libvirt domain name: attach with libvirt, and talk to the "
                              "guest agent through libvirt unless --qga is given")
        a.add_argument("--libvirt-uri", default="qemu:///system", metavar="URI",
                       help="libvirt connection URI (default: %(default)s)")
        a.add_argument("--system-metadata-out", type=Path, metavar="FILE",
                       help="write the updated system metadata (ports_pattern) as JSON")
        a.add_argument("--style", choices=[x.value for x in Style], default="default")
        a.set_defaults(func=cmd_hotplug)


def _load_obj(path: Path, key: str) -> dict[str, object]:
    from ...errors import MISSING, FieldError, InvalidInput
    from ...sources.documents import read_json

    obj = read_json(path)
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
        obj = obj[key]  # the API's {"port": {...}} envelope
    if not isinstance(obj, dict):
        raise InvalidInput([FieldError("", MISSING, f"is not a Neutron {key} object")],
                           str(path))
    return obj


def cmd_hotplug(args: argparse.Namespace) -> int:
    import json

    from ... import hotplug
    from ...errors import UsageError
    from ...hostio import check_output, write_atomic
    from ...qga import GuestAgent, LibvirtTransport
    from ...sources.documents import read_json

    doc = read_json(args.instance)
    if args.qmp and not args.qga:
        raise UsageError("--qmp needs --qga SOCKET (the guest agent's socket)")
    if args.system_metadata_out is not None:
        inputs: list[Path] = [args.instance]
        if args.hotplug_cmd == "attach":
            inputs += [args.port, *args.subnet, *args.network]
        check_output(args.system_metadata_out, "--system-metadata-out", inputs)
    attacher: hotplug.NicAttacher = (
        hotplug.QmpAttacher(args.qmp) if args.qmp
        else hotplug.LibvirtAttacher(args.libvirt, args.libvirt_uri))
    options = Options(Style(args.style))
    status = 0
    agent = (GuestAgent.unix(args.qga) if args.qga
             else GuestAgent(LibvirtTransport(args.libvirt, args.libvirt_uri)))
    with agent as ga:
        if args.hotplug_cmd == "attach":
            result = hotplug.attach(
                doc, _load_obj(args.port, "port"), ga, attacher, args.tap,
                [_load_obj(p, "subnet") for p in args.subnet],
                [_load_obj(p, "network") for p in args.network],
                args.allow_dhcp_fallback, args.timeout, options)
            if result.seconds_to_address is not None:
                print(f"{result.nic.name} ({result.nic.mac}) up with its address "
                      f"{result.seconds_to_address:.2f} s after the request")
                if result.attached_at is not None:
                    print(f"attached at t={result.attached_at:.3f} (CLOCK_MONOTONIC)")
            elif not result.configured:
                # Attached as asked: a warning, not a failure.
                assert result.applied is not None
                print(f"netinject: warning: {result.nic.name} attached WITHOUT injected "
                      f"config (--allow-dhcp-fallback): the guest needs DHCP for it; "
                      f"{hotplug.describe(result.applied)}", file=sys.stderr)
            else:
                print(f"{result.nic.name} attached, but the agent did not report its "
                      f"address within {args.timeout:.0f} s", file=sys.stderr)
                status = 1
        else:
            result = hotplug.detach(doc, args.port_id, ga, attacher, options)
            print(f"{result.nic.name} ({result.nic.mac}) detached; index "
                  f"{result.nic.index} freed")
    if args.system_metadata_out is not None:
        write_atomic(args.system_metadata_out,
                     (json.dumps(result.system_metadata, indent=2, sort_keys=True)
                      + "\n").encode())
    return status
