"""Subcommands beyond render (registered by cli.build_parser)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .render import Options, Style


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .cli import _add_input_args

    p = sub.add_parser(
        "drive", help="build the config drive image (OpenStack layout + netinject payload)",
        description="Build a config drive (label config-2) a compute node attaches to the VM: "
                    "openstack/latest/{meta_data,network_data,vendor_data}.json and, for "
                    "images with support_inject_ip, the netinject payload and manifest. "
                    "Reproducible; no root or loop mount needed.")
    _add_input_args(p)
    p.add_argument("--out", type=Path, required=True, metavar="IMAGE",
                   help="image file to write (built beside it, renamed at the end)")
    p.add_argument("--format", choices=["vfat", "iso9660"], default="vfat", dest="drive_format",
                   help="filesystem: vfat disk (default, live-migration friendly) or iso9660")
    p.add_argument("--libvirt-xml", action="store_true",
                   help="also print the libvirt <disk> element attaching it read-only (virtio)")
    p.add_argument("--target-dev", default="vdz", metavar="DEV",
                   help="guest device name in the libvirt XML (default: %(default)s)")
    p.set_defaults(func=cmd_drive)

    g = sub.add_parser(
        "guest-bundle", help="write the guest agent as one runnable file (zipapp)",
        description="Write the guest agent (standard library only, Python >= 3.9) as a zipapp. "
                    "In an image: 'python3 netinject-guest.pyz install --root /mnt/image' "
                    "installs the boot service (systemd unit or rcS script).")
    g.add_argument("--out", type=Path, default=Path("netinject-guest.pyz"), metavar="FILE",
                   help="output file (default: %(default)s)")
    g.set_defaults(func=cmd_guest_bundle)

    bench = sub.add_parser(
        "bench", help="benchmarks that print figures (medians, ratios to the peer)",
        description="Benchmarks. Each prints medians of interleaved runs and the ratio to "
                    "the peer measured in the same run.")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    b = bsub.add_parser("drive", help="drive build time vs nova's recipe (mkfs.vfat + copy; "
                                      "genisoimage)")
    b.add_argument("--runs", type=int, default=15, help="runs per contender (default 15)")
    b.add_argument("--json", type=Path, metavar="FILE", help="also write raw figures as JSON")
    b.set_defaults(func=cmd_bench_drive)


def cmd_drive(args: argparse.Namespace) -> int:
    from . import drive, policy
    from .cli import load_instance

    instance, _ = load_instance(args)
    result = drive.build(instance, args.out, args.drive_format, Options(Style(args.style)))
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


def cmd_bench_drive(args: argparse.Namespace) -> int:
    import json

    from .bench import drive_bench

    results = drive_bench.run(args.runs)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def cmd_guest_bundle(args: argparse.Namespace) -> int:
    from . import guest_bundle

    print(guest_bundle.build(args.out))
    return 0
