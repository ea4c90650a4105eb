"""netinject drive: build the config drive image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...render import Options, Style
from ._args import add_input_args, input_paths, instance_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "drive", help="build the config drive image (OpenStack layout + netinject payload)",
        description="Build a config drive (label config-2) a compute node attaches to the VM: "
                    "openstack/latest/{meta_data,network_data,vendor_data}.json and, for "
                    "images with support_inject_ip, the netinject payload and manifest. "
                    "Reproducible; no root or loop mount needed.")
    add_input_args(p)
    p.add_argument("--out", type=Path, required=True, metavar="IMAGE",
                   help="image file to write: a regular file or a new path (built beside "
                        "it, renamed at the end)")
    p.add_argument("--format", choices=["vfat", "iso9660"], default="vfat", dest="drive_format",
                   help="filesystem: vfat disk (default, live-migration friendly) or iso9660")
    p.add_argument("--user-data", type=Path, metavar="FILE",
                   help="the instance's user data (for cloud-init beside the agent), put "
                        "in openstack/latest/user_data as nova does (at most 65535 bytes)")
    p.add_argument("--libvirt-xml", action="store_true",
                   help="also print the libvirt <disk> element attaching it read-only (virtio)")
    p.add_argument("--target-dev", default="vdz", metavar="DEV",
                   help="guest device name in the libvirt XML (default: %(default)s)")
    p.set_defaults(func=cmd_drive)


def cmd_drive(args: argparse.Namespace) -> int:
    from ... import drive, policy
    from ...hostio import check_output

    instance, _ = instance_from(args)
    inputs = [*input_paths(args), *([args.user_data] if args.user_data else [])]
    check_output(args.out, "--out", inputs)
    user_data = None
    if args.user_data is not None:
        from ...errors import UsageError

        try:
            user_data = args.user_data.read_bytes()
        except OSError as exc:
            raise UsageError(f"--user-data: {str(args.user_data)!r}: {exc.strerror}") from None
    result = drive.build(instance, args.out, args.drive_format, Options(Style(args.style)),
                         user_data)
    print(f"{result.path}: {result.format} config drive, label {drive.LABEL}, "
          f"{result.size // (1024 * 1024) or result.size} "
          f"{'MiB' if result.size >= 1024 * 1024 else 'bytes'}, volume id {result.volume_id:08x}",
          file=sys.stderr)
    if result.payload:
        print(f"netinject payload: {sum(1 for f in result.files if f.parts[0] == 'netinject') - 1}"
              " file(s) + manifest (static injection)", file=sys.stderr)
    else:
        print(f"image does not set {policy.PROPERTY}=true: no netinject payload; the legacy "
              "DHCP path applies (meta_data.json and network_data.json only)", file=sys.stderr)
    if args.libvirt_xml:
        sys.stdout.write(drive.libvirt_disk_xml(result.path, args.target_dev))
    return 0
