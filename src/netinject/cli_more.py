"""Subcommands beyond render (registered by cli.build_parser)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .render import Options, Style
from .vm.scenarios import DEFAULT_SCENARIOS, SCENARIOS


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
        a = hsub.add_parser(action, help=f"{action} a NIC",
                            description="Allocate the NIC index (ports_pattern, lowest "
                                        "free), install the guest's files in one "
                                        "transaction, then attach the NIC and wait for its "
                                        "address. Exit 1 (nothing attached) unless every "
                                        "file was installed; with --allow-dhcp-fallback the "
                                        "NIC is attached anyway (exit 0, a warning)."
                            if action == "attach" else
                            "Detach the port's NIC, rewrite the guest's files without it "
                            "and free its index in ports_pattern.")
        a.add_argument("instance", type=Path, metavar="INSTANCE.json",
                       help="the instance document with its current ports")
        if action == "attach":
            a.add_argument("--port", type=Path, required=True, metavar="PORT.json",
                           help="the new Neutron port (object, or {\"port\": {...}})")
            a.add_argument("--subnet", type=Path, action="append", default=[],
                           metavar="SUBNET.json", help="its subnet, if not in INSTANCE.json")
            a.add_argument("--network", type=Path, action="append", default=[],
                           metavar="NETWORK.json", help="its network, if not in INSTANCE.json")
            a.add_argument("--tap", metavar="IFNAME",
                           help="host tap device for the NIC (default: tap<index>)")
            a.add_argument("--allow-dhcp-fallback", action="store_true",
                           help="attach even if the agent cannot take the config (the "
                                "guest then needs DHCP; exit 0 with a warning)")
            a.add_argument("--timeout", type=float, default=60.0,
                           help="seconds to wait for the address (default 60)")
        else:
            a.add_argument("--port-id", required=True, metavar="UUID")
        a.add_argument("--qga", required=True, metavar="SOCKET",
                       help="qemu-guest-agent socket (host end of org.qemu.guest_agent.0)")
        how = a.add_mutually_exclusive_group(required=True)
        how.add_argument("--qmp", metavar="SOCKET", help="QEMU's QMP socket")
        how.add_argument("--libvirt", metavar="DOMAIN", help="libvirt domain name")
        a.add_argument("--system-metadata-out", type=Path, metavar="FILE",
                       help="write the updated system metadata (ports_pattern) as JSON")
        a.add_argument("--style", choices=[x.value for x in Style], default="default")
        a.set_defaults(func=cmd_hotplug)

    img = sub.add_parser(
        "image", help="build Debian guest images (for the boot benchmark and tests)",
        description="Guest images built from Debian packages with mmdebstrap (the mirrors "
                    "this machine's apt uses) and packed with mkfs.ext4 -d: no loop mounts.")
    isub = img.add_subparsers(dest="image_cmd", metavar="ACTION", required=True)
    ib = isub.add_parser("build", help="build variant images into a directory",
                         description="Build variants (sharing one cached base) and put "
                                     "<variant>.img, vmlinuz and initrd.img into --out.")
    ib.add_argument("--variant", action="append", metavar="NAME",
                    help="dhcp, baked-static, inject, cloud-init (repeatable; default: all)")
    ib.add_argument("--out", type=Path, required=True, metavar="DIR")
    ib.set_defaults(func=cmd_image_build)

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
    bb = bsub.add_parser(
        "boot", help="time-to-network of real QEMU guests per scenario",
        description="Boot real Debian guests under QEMU (KVM if usable, else TCG), scenarios "
                    "interleaved, and print median/min/max time-to-network (QEMU start to "
                    "the guest's first ARP answer) and each scenario's ratio to inject.")
    bb.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS), metavar="LIST",
                    help="comma-separated; known: " + ", ".join(SCENARIOS)
                         + " (default: %(default)s)")
    bb.add_argument("--runs", type=int, default=3, help="boots per scenario (default 3)")
    bb.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    bb.add_argument("--plot", type=Path, metavar="PNG", help="write a chart")
    bb.set_defaults(func=cmd_bench_boot)
    ba = bsub.add_parser(
        "agent", help="the guest agent's own time on first and later boots (real guests)",
        description="Boot the inject image twice per run on a private writable copy and "
                    "report the agent's own time (from its log) on the first boot and on "
                    "the second boot of the same instance.")
    ba.add_argument("--runs", type=int, default=3)
    ba.add_argument("--json", type=Path, metavar="FILE")
    ba.set_defaults(func=cmd_bench_agent)

    demo = sub.add_parser(
        "demo", help="the whole flow on the built-in example: render, drive, boot, measure",
        description="Render the built-in example instance, build its config drive, boot a "
                    "Debian guest with the netinject agent under QEMU and show its "
                    "time-to-network next to the same image asking DHCP.")
    demo.add_argument("--skip-dhcp", action="store_true",
                      help="boot only the inject guest (skip the ~80 s DHCP-timeout boot)")
    demo.set_defaults(func=cmd_demo)


def cmd_drive(args: argparse.Namespace) -> int:
    from . import drive, policy
    from .cli import load_instance
    from .hostio import check_output

    instance, _ = load_instance(args)
    check_output(args.out, "--out")
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


def cmd_image_build(args: argparse.Namespace) -> int:
    import shutil

    from .vm import image
    from .vm.progress import Progress

    names = args.variant or list(image.VARIANTS)
    for n in names:
        if n not in image.VARIANTS:
            from .cli import UsageError

            raise UsageError(f"unknown variant {n!r} (known: {', '.join(image.VARIANTS)})")
    progress = Progress()
    args.out.mkdir(parents=True, exist_ok=True)
    for n in names:
        built = image.build_variant(n, progress)
        for src, dst in ((built.image, args.out / f"{n}.img"),
                         (built.kernel, args.out / "vmlinuz"),
                         (built.initrd, args.out / "initrd.img")):
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
            print(dst)
    return 0


def cmd_bench_boot(args: argparse.Namespace) -> int:
    from .vm import bench_boot
    from .vm.progress import Progress

    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names or args.runs < 1:
        from .cli import UsageError

        raise UsageError(f"unknown scenario(s) {', '.join(unknown)}; known: "
                         f"{', '.join(SCENARIOS)}" if unknown else "give scenarios and --runs >= 1")
    data = bench_boot.run(names, args.runs, Progress())
    print(bench_boot.format_table(data))
    if args.json is not None:
        bench_boot.save_json(data, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot is not None:
        bench_boot.plot(data, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from . import drive
    from .render import FORMATS, render_all
    from .sources.neutron import parse_document
    from .vm import bench_boot
    from .vm import instance as vm
    from .vm.progress import Progress

    progress = Progress()
    doc = vm.document()
    instance = parse_document(doc).instance
    print("== 1. render: the guest's network files from the example instance (Neutron data)")
    print(json.dumps({"ports": doc["ports"], "subnets": doc["subnets"]}, indent=1)[:600] + " ...")
    for path, text in sorted(render_all(instance, FORMATS, Options()).items()):
        print(f"--- /{path}")
        sys.stdout.write(text)
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "config.img"
        built = drive.build(instance, img)
        print(f"== 2. drive: {built.format} config drive, label {drive.LABEL}, "
              f"{len(built.files)} files, volume id {built.volume_id:08x}")
    print("== 3. boot: Debian bookworm guests under QEMU (first run builds the images)")
    names = ["inject"] if args.skip_dhcp else ["inject", "dhcp-timeout"]
    data = bench_boot.run(names, 1, progress)
    print("== 4. time to network")
    print(bench_boot.format_table(data))
    return 0


def cmd_bench_agent(args: argparse.Namespace) -> int:
    import json

    from .vm import bench_boot
    from .vm.progress import Progress

    data = bench_boot.agent_costs(args.runs, Progress())
    f1, f2 = data["first_boot_ms"], data["second_boot_ms"]
    print(f"agent's own work ({data['accel']}, {data['runs']} run(s)): first boot median "
          f"{bench_boot.fmt(data['first_boot_median_ms'])} ms {f1} (of it CPU: median "
          f"{bench_boot.fmt(data['first_boot_cpu_median_ms'])} ms "
          f"{data['first_boot_cpu_ms']}); second boot median "
          f"{bench_boot.fmt(data['second_boot_median_ms'])} ms {f2}")
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


def _load_obj(path: Path, key: str) -> dict[str, object]:
    from .errors import MISSING, FieldError, InvalidInput
    from .sources.neutron import read_json

    obj = read_json(path)
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
        obj = obj[key]  # the API's {"port": {...}} envelope
    if not isinstance(obj, dict):
        raise InvalidInput([FieldError("", MISSING, f"is not a Neutron {key} object")],
                           str(path))
    return obj


def cmd_hotplug(args: argparse.Namespace) -> int:
    import json

    from . import hotplug
    from .hostio import check_output, write_atomic
    from .qga import GuestAgent
    from .sources.neutron import read_json

    doc = read_json(args.instance)
    if args.system_metadata_out is not None:
        check_output(args.system_metadata_out, "--system-metadata-out")
    attacher: hotplug.NicAttacher = (hotplug.QmpAttacher(args.qmp) if args.qmp
                                     else hotplug.LibvirtAttacher(args.libvirt))
    options = Options(Style(args.style))
    status = 0
    with GuestAgent.unix(args.qga) as ga:
        if args.hotplug_cmd == "attach":
            result = hotplug.attach(
                doc, _load_obj(args.port, "port"), ga, attacher, args.tap,
                [_load_obj(p, "subnet") for p in args.subnet],
                [_load_obj(p, "network") for p in args.network],
                args.allow_dhcp_fallback, args.timeout, options)
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
                      f"{hotplug.describe(result.applied)}", file=sys.stderr)
            else:
                print(f"{result.nic.name} attached, but the agent did not report its "
                      f"address within {args.timeout:.0f} s", file=sys.stderr)
                status = 1
        else:
            result = hotplug.detach(doc, args.port_id, ga, attacher, options)
            print(f"{result.nic.name} ({result.nic.mac}) detached; index "
                  f"{result.nic.index} freed")
    if args.system_metadata_out is not None:
        write_atomic(args.system_metadata_out,
                     (json.dumps(result.system_metadata, indent=2, sort_keys=True)
                      + "\n").encode())
    return status
