"""netinject guest-bundle: the guest agent as one runnable file, or as a .deb."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser(
        "guest-bundle", help="write the guest agent as one runnable file (zipapp) or a .deb",
        description="Write the guest agent (standard library only, Python >= 3.9) as a zipapp. "
                    "In an image: 'python3 netinject-guest.pyz install --root /mnt/image' "
                    "installs the boot service (systemd unit or rcS script). With --deb, "
                    "write it as a Debian package (architecture all, Depends: python3 (>= "
                    "3.9)) whose maintainer scripts run that installer: 'dpkg -i' in an "
                    "image (or its chroot) installs the boot service, 'dpkg -r' / 'dpkg -P' "
                    "remove it.",
        epilog="Examples: netinject guest-bundle --out netinject-guest.pyz; "
               "netinject guest-bundle --deb netinject-guest_all.deb; "
               "virt-customize -a IMAGE.qcow2 --copy-in netinject-guest_all.deb:/tmp "
               "--run-command 'dpkg -i /tmp/netinject-guest_all.deb'")
    g.add_argument("--out", type=Path, metavar="FILE",
                   help="the zipapp (default: netinject-guest.pyz, unless --deb is given)")
    g.add_argument("--deb", type=Path, metavar="FILE", help="write a Debian package here")
    g.add_argument("--maintainer", metavar="'NAME <ADDRESS>'",
                   help="the package's Maintainer field (default: the DEBFULLNAME and "
                        "DEBEMAIL environment variables if both are set, else a "
                        "placeholder)")
    g.set_defaults(func=cmd_guest_bundle)


def cmd_guest_bundle(args: argparse.Namespace) -> int:
    import os

    from ... import deb, guest_bundle
    from ...errors import UsageError
    from ...hostio import check_outputs

    out: Path | None = args.out
    if out is None and args.deb is None:
        out = Path("netinject-guest.pyz")
    if args.maintainer is not None and args.deb is None:
        raise UsageError("--maintainer: only with --deb")
    check_outputs([("--out", out), ("--deb", args.deb)])
    if args.deb is not None:
        text = args.maintainer
        if text is None and os.environ.get("DEBFULLNAME") and os.environ.get("DEBEMAIL"):
            text = f"{os.environ['DEBFULLNAME']} <{os.environ['DEBEMAIL']}>"
        try:
            maintainer = deb.Maintainer.parse(text or deb.DEFAULT_MAINTAINER)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        print(deb.build(args.deb, maintainer))
    if out is not None:
        print(guest_bundle.build(out))
    return 0
