"""The command line. The one place where errors become messages and exit codes.

Exit status: 0 success, 1 operational failure (a tool or device failed), 2 bad input
or usage (every problem printed on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from . import __version__
from .errors import InvalidInput, NetinjectError
from .hostio import OutputError, check_output, check_tree, write_atomic, write_tree
from .model import Instance
from .render import FORMATS, Options, Style, render_all
from .render import resolv as resolv_renderer

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(NetinjectError):
    """Wrong combination of command-line options."""


def _formats(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {', '.join(map(repr, unknown)) or '(none)'}; "
            f"choose from {','.join(FORMATS)}")
    return names


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("instance", nargs="?", type=Path, metavar="INSTANCE.json",
                   help="instance document: instance, image, system_metadata and Neutron "
                        "ports/subnets/networks (see README)")
    p.add_argument("--network-data", type=Path, metavar="FILE",
                   help="read nova's network_data.json instead of an instance document")
    p.add_argument("--meta-data", type=Path, metavar="FILE",
                   help="with --network-data: nova's meta_data.json (uuid, hostname)")
    p.add_argument("--style", choices=[s.value for s in Style], default=Style.DEFAULT.value,
                   help="ENI flavour: 'default' needs only iproute2; 'seed' reproduces the "
                        "seed's net-tools/arping lines (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netinject",
        description="Render a cloud VM's network configuration from Neutron data and inject "
                    "it before the guest's network service starts, so no VM waits on DHCP.",
        epilog="Exit status: 0 ok, 1 failure, 2 bad input (every error listed, nothing "
               "written). Run 'netinject COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"netinject {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "render", help="render the guest's network files into a directory",
        description="Render /etc/network/interfaces, udev rules, resolv.conf and hostname "
                    "for an instance. Files land under --out at their guest paths "
                    "(OUT/etc/network/interfaces, ...). On bad input nothing is written.")
    _add_input_args(p)
    p.add_argument("--out", type=Path, metavar="DIR", help="directory to write the tree into")
    p.add_argument("--print", action="store_true", dest="print_only",
                   help="show what would be written, write nothing")
    p.add_argument("--format", type=_formats, default=list(FORMATS), metavar="LIST",
                   help=f"comma-separated formats (default: {','.join(FORMATS)})")
    p.add_argument("--system-metadata-out", type=Path, metavar="FILE",
                   help="write the instance's updated system metadata (ports_pattern) as JSON")
    p.set_defaults(func=cmd_render)

    from . import cli_more

    cli_more.register(sub)
    return parser


def load_instance(args: argparse.Namespace) -> tuple[Instance, dict[str, str] | None]:
    """The validated instance from either input form, and its updated system metadata."""
    from .sources import network_data, neutron

    if args.network_data is not None:
        if args.instance is not None:
            raise UsageError("give either INSTANCE.json or --network-data, not both")
        nd = neutron.read_json(args.network_data)
        md = neutron.read_json(args.meta_data) if args.meta_data is not None else None
        return network_data.parse(nd, md, source=str(args.network_data)), None
    if args.meta_data is not None:
        raise UsageError("--meta-data goes with --network-data")
    if args.instance is None:
        raise UsageError("give INSTANCE.json or --network-data FILE")
    loaded = neutron.load_file(args.instance)
    return loaded.instance, dict(loaded.system_metadata)


def cmd_render(args: argparse.Namespace) -> int:
    if args.out is None and not args.print_only:
        raise UsageError("give --out DIR (or --print to only show the files)")
    instance, sysmeta = load_instance(args)
    if args.system_metadata_out is not None and sysmeta is None:
        raise UsageError("--system-metadata-out needs an instance document (ports_pattern "
                         "lives in its system metadata)")
    files = render_all(instance, args.format, Options(Style(args.style)))
    for warning in resolv_renderer.warnings(instance):
        print(f"netinject: warning: {warning}", file=sys.stderr)
    if not args.print_only:
        # Every output path is checked before the first write: a conflict found later
        # would leave some files written.
        check_tree(args.out, files, "--out")
    if args.system_metadata_out is not None:
        check_output(args.system_metadata_out, "--system-metadata-out")
    if args.print_only:
        for path, content in sorted(files.items()):
            print(f"==> {path} <==")
            sys.stdout.write(content)
        return EXIT_OK
    for written in write_tree(args.out, files):
        print(written)
    if args.system_metadata_out is not None:
        assert sysmeta is not None
        write_atomic(args.system_metadata_out,
                     (json.dumps(sysmeta, indent=2, sort_keys=True) + "\n").encode())
        print(args.system_metadata_out)
    return EXIT_OK


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, systemd, kill) unwinds like Ctrl-C, so QEMU, dnsmasq and the
    # network namespaces of a running boot are cleaned up rather than left behind.
    previous = (signal.signal(signal.SIGTERM, _terminate)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        return int(args.func(args))
    except InvalidInput as exc:
        where = f"{exc.source}: " if exc.source else ""
        print(f"netinject: {where}invalid input ({len(exc.errors)} error(s)):",
              file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, OutputError) as exc:
        print(f"netinject: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NetinjectError as exc:
        print(f"netinject: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except FileNotFoundError as exc:
        print(f"netinject: error: {exc.filename}: no such file", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("netinject: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
