"""netinject render: the guest's network files into a directory (or shown)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ...errors import UsageError
from ...hostio import (
    check_not_in_tree,
    check_output,
    check_tree,
    file_output,
    tree_outputs,
    write_all,
)
from ...render import FORMATS, Options, Style, render
from ._args import add_input_args, formats, input_paths, instance_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "render", help="render the guest's network files into a directory",
        description="Render an instance's network config for every stack a guest may use "
                    "(ifupdown's interfaces file, systemd-networkd .network/.link files, "
                    "netplan YAML, NetworkManager keyfiles) and the files they share "
                    "(udev rules, resolv.conf, hostname). Files land under --out at their "
                    "guest paths (OUT/etc/network/interfaces, ...; netplan and "
                    "NetworkManager files 0600), all of them or none. --out itself may "
                    "be a symlink; nothing below it is followed (a symlinked directory "
                    "there is refused, a symlink at a file replaced). On bad input "
                    "nothing is written.")
    add_input_args(p)
    p.add_argument("--out", type=Path, metavar="DIR", help="directory to write the tree into")
    p.add_argument("--print", action="store_true", dest="print_only",
                   help="show what would be written, write nothing")
    p.add_argument("--format", type=formats, default=list(FORMATS), metavar="LIST",
                   help=f"comma-separated formats (default: all: {','.join(FORMATS)})")
    p.add_argument("--system-metadata-out", type=Path, metavar="FILE",
                   help="write the instance's updated system metadata (ports_pattern) as "
                        "JSON (a regular file or a new path; written with the tree)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out is None and not args.print_only:
        raise UsageError("give --out DIR (or --print to only show the files)")
    instance, sysmeta = instance_from(args)
    if args.system_metadata_out is not None and sysmeta is None:
        raise UsageError("--system-metadata-out needs an instance document (ports_pattern "
                         "lives in its system metadata)")
    rendered = render(instance, args.format, Options(Style(args.style)))
    files = rendered.files
    for warning in rendered.warnings:
        print(f"netinject: warning: {warning}", file=sys.stderr)
    inputs = input_paths(args)
    if not args.print_only:
        # Every output path is checked before the first write: a conflict found later
        # would leave some files written.
        check_tree(args.out, files, "--out", inputs)
    if args.system_metadata_out is not None:
        check_output(args.system_metadata_out, "--system-metadata-out", inputs)
        if not args.print_only:
            check_not_in_tree(args.system_metadata_out, "--system-metadata-out", args.out,
                              files, "--out")
    if args.print_only:
        for path, content in sorted(files.items()):
            print(f"==> {path} <==")
            sys.stdout.write(content)
        return 0
    outputs = tree_outputs(args.out, files)
    if args.system_metadata_out is not None:
        assert sysmeta is not None
        outputs.append(file_output(args.system_metadata_out, (json.dumps(
            sysmeta, indent=2, sort_keys=True) + "\n").encode()))
    # The tree and the system metadata land together or not at all.
    for written in write_all(outputs):
        print(written)
    return 0
