"""Arguments several commands share (the instance input, formats, the ENI style)."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    add_style_arg(p)


def add_style_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--style", choices=[s.value for s in Style], default=Style.DEFAULT.value,
                   help="ENI flavour: 'default' needs only iproute2; 'seed' reproduces the "
                        "seed's net-tools/arping lines (default: %(default)s)")


def instance_from(args: argparse.Namespace) -> tuple[Instance, dict[str, str] | None]:
    """The validated instance named by add_input_args' arguments."""
    return load_instance(args.instance, args.network_data, args.meta_data)
