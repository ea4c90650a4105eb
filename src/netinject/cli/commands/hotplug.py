"""netinject hotplug attach|detach: a NIC's config into the guest first, then the NIC."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...render import Options, Style
from ._args import add_live_args, live_form


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
        a = hsub.add_parser(
            action, help=f"{action} a NIC",
            usage=("%(prog)s (INSTANCE.json --port PORT.json | --cloud NAME --server ID "
                   "--port ID) (--qmp SOCKET --qga SOCKET | --libvirt DOMAIN) [options]"
                   if action == "attach" else
                   "%(prog)s (INSTANCE.json --port-id ID | --cloud NAME --server ID --port "
                   "ID) (--qmp SOCKET --qga SOCKET | --libvirt DOMAIN) [options]"),
            description="Allocate the NIC index (lowest free), install the guest's files in "
                        "one transaction, then attach the NIC and wait for its address. "
                        "Exit 1 (nothing attached) unless every file was installed; with "
                        "--allow-dhcp-fallback the NIC is attached anyway (exit 0, a "
                        "warning). If the NIC cannot be attached, the guest's old config is "
                        "applied again and the error says what its files are. With --cloud "
                        "the instance and the port are read from Neutron, the index comes "
                        "from the port tags as the vendordata service allocates it, and "
                        "the port is bound to the server (device_id) and tagged once the "
                        "guest has its config and the NIC is attached (nothing is written "
                        "otherwise); a port bound to another instance is refused (exit 2)."
            if action == "attach" else
            "Detach the port's NIC, then rewrite the guest's files without it (its "
            "config and udev rule go) and free its index: in ports_pattern (the document "
            "form, --system-metadata-out) or, with --cloud, by removing the port's tag and "
            "unbinding it (device_id) once the guest is done.",
            epilog="Exit status: 0 done; 1 the guest or the NIC failed (the message says what "
                   "the guest's files are), or the agent, QEMU, libvirt or the cloud could "
                   "not be reached; 2 bad input or usage (a port of another instance among "
                   "them). See docs/operator-guide.md.")
        a.add_argument("instance", type=Path, metavar="INSTANCE.json", nargs="?",
                       help="the instance document with its current ports (not with --cloud)")
        add_live_args(a, "read the server, its ports, subnets, networks and image, and the "
                         "port, through openstacksdk (clouds.yaml)")
        if action == "attach":
            a.add_argument("--port", required=True, metavar="PORT.json|ID",
                           help="the new Neutron port: a JSON file (object, or "
                                "{\"port\": {...}}), or with --cloud its id")
            a.add_argument("--subnet", type=Path, action="append", default=[],
                           metavar="SUBNET.json", help="its subnet, if not in INSTANCE.json")
            a.add_argument("--network", type=Path, action="append", default=[],
                           metavar="NETWORK.json", help="its network, if not in INSTANCE.json")
            a.add_argument("--tap", metavar="IFNAME",
                           help="host tap device for the NIC (default: tap<index>)")
            a.add_argument("--allow-dhcp-fallback", action="store_true",
                           help="attach even if the agent cannot take the config (the "
                                "guest then needs DHCP; exit 0 with a warning; with --cloud "
                                "nothing is written to Neutron)")
            a.add_argument("--timeout", type=float, default=60.0,
                           help="seconds to wait for the address (default 60)")
            a.add_argument("--no-wait", action="store_true",
                           help="do not wait for the agent to report the NIC's address")
        else:
            a.add_argument("--port-id", "--port", dest="port_id", required=True,
                           metavar="ID", help="the port whose NIC to detach")
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
                       help="write the updated system metadata (ports_pattern) as JSON (the "
                            "document form)")
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


def _check_form(args: argparse.Namespace) -> None:
    """The document form or the --cloud form, whole (UsageError otherwise)."""
    from ...errors import UsageError

    attach = args.hotplug_cmd == "attach"
    if live_form(args, (args.instance,), "an instance document"):
        if attach and (args.subnet or args.network):
            raise UsageError("--subnet and --network go with an instance document (with "
                             "--cloud they are read from Neutron)")
        if args.system_metadata_out is not None:
            raise UsageError("--system-metadata-out goes with an instance document (with "
                             "--cloud the NIC map lives on the port tags)")
        return
    if args.instance is None:
        raise UsageError("give the instance document (INSTANCE.json) or --cloud NAME "
                         "--server ID")


def cmd_hotplug(args: argparse.Namespace) -> int:
    import json

    from ... import hotplug
    from ...errors import UsageError
    from ...hostio import check_output, write_atomic
    from ...qga import GuestAgent, LibvirtTransport
    from ...sources.documents import read_json

    _check_form(args)
    attach = args.hotplug_cmd == "attach"
    if args.qmp and not args.qga:
        raise UsageError("--qmp needs --qga SOCKET (the guest agent's socket)")
    server = doc = None
    if args.cloud is not None:
        from ...openstack import live

        port_id = live.server_uuid(args.port if attach else args.port_id, "--port")
        server = live.read(args.cloud, args.server, args.image, args.hostname)
    else:
        doc = read_json(args.instance)
    if args.system_metadata_out is not None:
        inputs: list[Path] = [args.instance]
        if attach:
            inputs += [Path(args.port), *args.subnet, *args.network]
        check_output(args.system_metadata_out, "--system-metadata-out", inputs)
    attacher: hotplug.NicAttacher = (
        hotplug.QmpAttacher(args.qmp) if args.qmp
        else hotplug.LibvirtAttacher(args.libvirt, args.libvirt_uri))
    options = Options(Style(args.style))
    status = 0
    written: tuple[str, ...] = ()
    agent = (GuestAgent.unix(args.qga) if args.qga
             else GuestAgent(LibvirtTransport(args.libvirt, args.libvirt_uri)))
    with agent as ga:
        if attach:
            if server is not None:
                from ...openstack.attach import attach_port

                done = attach_port(server, port_id, ga, attacher, args.tap,
                                   args.allow_dhcp_fallback, args.timeout, options,
                                   wait=not args.no_wait)
                result, written = done.result, done.written
            else:
                assert doc is not None
                result = hotplug.attach(
                    doc, _load_obj(Path(args.port), "port"), ga, attacher, args.tap,
                    [_load_obj(p, "subnet") for p in args.subnet],
                    [_load_obj(p, "network") for p in args.network],
                    args.allow_dhcp_fallback, args.timeout, options, wait=not args.no_wait)
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
                      f"{hotplug.describe(result.applied)}"
                      + ("; nothing was written to Neutron" if server is not None else ""),
                      file=sys.stderr)
            elif args.no_wait:
                print(f"{result.nic.name} ({result.nic.mac}) attached; the guest has its "
                      "config (not waiting for its address)")
            else:
                print(f"{result.nic.name} attached, but the agent did not report its "
                      f"address within {args.timeout:.0f} s", file=sys.stderr)
                status = 1
        else:
            if server is not None:
                from ...openstack.attach import detach_port

                done = detach_port(server, port_id, ga, attacher, options)
                result, written = done.result, done.written
            else:
                assert doc is not None
                result = hotplug.detach(doc, args.port_id, ga, attacher, options)
            print(f"{result.nic.name} ({result.nic.mac}) detached; index "
                  f"{result.nic.index} freed")
    for line in written:
        print(f"Neutron: {line}")
    if args.system_metadata_out is not None:
        write_atomic(args.system_metadata_out,
                     (json.dumps(result.system_metadata, indent=2, sort_keys=True)
                      + "\n").encode())
    return status
