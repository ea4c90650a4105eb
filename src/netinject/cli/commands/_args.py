"""Arguments several commands share (the instance input, formats, the ENI style)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import UsageError
from ...model import Instance
from ...render import FORMATS, Style
from ...sources.documents import load_instance


def formats(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {', '.join(map(repr, unknown)) or '(none)'}; "
            f"choose from {','.join(FORMATS)}")
    return names


def add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("instance", nargs="?", type=Path, metavar="INSTANCE.json",
                   help="instance document: instance, image, system_metadata and Neutron "
                        "ports/subnets/networks (see README)")
    p.add_argument("--network-data", type=Path, metavar="FILE",
                   help="read nova's network_data.json instead of an instance document")
    p.add_argument("--meta-data", type=Path, metavar="FILE",
                   help="with --network-data: nova's meta_data.json (uuid, hostname)")
    add_live_args(p, "read the instance from a running cloud through openstacksdk "
                  "(clouds.yaml), as the vendordata service does; nothing is written to "
                  "the cloud")
    add_style_arg(p)


def add_live_args(p: argparse.ArgumentParser, description: str) -> None:
    """--cloud NAME --server ID [--image ID --hostname NAME]: the live-cloud form of a
    command's input (live_form checks it)."""
    live = p.add_argument_group("live cloud", description)
    live.add_argument("--cloud", metavar="NAME", help="clouds.yaml entry")
    live.add_argument("--server", metavar="ID", help="with --cloud: the server's uuid")
    live.add_argument("--image", metavar="ID",
                      help="with --server: the image id (with --hostname, nova's API is not "
                           "asked: what nova sends the vendordata service)")
    live.add_argument("--hostname", metavar="NAME", help="with --server: the hostname")


def live_form(args: argparse.Namespace, others: tuple[object, ...], alternatives: str
              ) -> bool:
    """Whether add_live_args' arguments ask for the live cloud (True: --cloud with
    --server, and none of ``others``, the other forms' inputs, named ``alternatives``);
    UsageError for a half or mixed form, or --image/--hostname without it."""
    if args.cloud is not None or args.server is not None:
        if args.cloud is None or args.server is None:
            raise UsageError("--cloud and --server go together")
        if any(o is not None for o in others):
            raise UsageError(f"give {alternatives} or --cloud with --server: one of them")
        return True
    if args.image is not None or args.hostname is not None:
        raise UsageError("--image and --hostname go with --cloud and --server")
    return False


def add_style_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--style", choices=[s.value for s in Style], default=Style.DEFAULT.value,
                   help="ENI flavour: 'default' needs only iproute2; 'seed' reproduces the "
                        "seed's net-tools/arping lines (default: %(default)s)")


def input_paths(args: argparse.Namespace) -> list[Path]:
    """The input files add_input_args' arguments name (no output may be one of them)."""
    return [p for p in (args.instance, args.network_data, args.meta_data) if p is not None]


def instance_from(args: argparse.Namespace) -> tuple[Instance, dict[str, str] | None]:
    """The validated instance named by add_input_args' arguments."""
    if live_form(args, (args.instance, args.network_data),
                 "an instance document, --network-data,"):
        from ...openstack.live import load

        return load(args.cloud, args.server, args.image, args.hostname), None
    return load_instance(args.instance, args.network_data, args.meta_data)
