"""netinject guest-bundle: the guest agent as one runnable file."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser(
        "guest-bundle", help="write the guest agent as one runnable file (zipapp)",
        description="Write the guest agent (standard library only, Python >= 3.9) as a zipapp. "
                    "In an image: 'python3 netinject-guest.pyz install --root /mnt/image' "
                    "installs the boot service (systemd unit or rcS script).")
    g.add_argument("--out", type=Path, default=Path("netinject-guest.pyz"), metavar="FILE",
                   help="output file (default: %(default)s)")
    g.set_defaults(func=cmd_guest_bundle)


def cmd_guest_bundle(args: argparse.Namespace) -> int:
    from ... import guest_bundle
    from ...hostio import check_output

    check_output(args.out, "--out")
    print(guest_bundle.build(args.out))
    return 0
