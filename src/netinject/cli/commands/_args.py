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
    live = p.add_argument_group(
        "live cloud", "read the instance from a running cloud through openstacksdk "
        "(clouds.yaml), as the vendordata service does; nothing is written to the cloud")
    live.add_argument("--cloud", metavar="NAME", help="clouds.yaml entry")
    live.add_argument("--server", metavar="ID", help="with --cloud: the server's uuid")
    live.add_argument("--image", metavar="ID",
                      help="with --server: the image id (with --hostname, nova's API is not "
                           "asked: what nova sends the vendordata service)")
    live.add_argument("--hostname", metavar="NAME", help="with --server: the hostname")
    add_style_arg(p)


def add_style_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--style", choices=[s.value for s in Style], default=Style.DEFAULT.value,
                   help="ENI flavour: 'default' needs only iproute2; 'seed' reproduces the "
                        "seed's net-tools/arping lines (default: %(default)s)")


def input_paths(args: argparse.Namespace) -> list[Path]:
    """The input files add_input_args' arguments name (no output may be one of them)."""
    return [p for p in (args.instance, args.network_data, args.meta_data) if p is not None]


def instance_from(args: argparse.Namespace) -> tuple[Instance, dict[str, str] | None]:
    """The validated instance named by add_input_args' arguments."""
    if args.cloud is not None or args.server is not None:
        if args.cloud is None or args.server is None:
            raise UsageError("--cloud and --server go together")
        if args.instance is not None or args.network_data is not None:
            raise UsageError("give an instance document, --network-data, or --cloud with "
                             "--server: one of them")
        from ...openstack.live import load

        return load(args.cloud, args.server, args.image, args.hostname), None
    if args.image is not None or args.hostname is not None:
        raise UsageError("--image and --hostname go with --cloud and --server")
    return load_instance(args.instance, args.network_data, args.meta_data)
