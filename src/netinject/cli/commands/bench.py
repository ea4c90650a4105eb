"""netinject bench drive|boot|agent|vendordata|hotplug|metadata-hotplug: benchmarks that
print figures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path, PurePosixPath

from ...guest.stacks import STACK_NAMES as STACKS
from ...hostio import check_outputs, check_tree, write_atomic
from ...vm.image import RELEASES
from ...vm.scenarios import DEFAULT_SCENARIOS, SCENARIOS, scenario


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
                         + "; each also as NAME@RELEASE, on the images of that Debian "
                         "release (" + ", ".join(RELEASES) + "; the bare name is "
                         "bookworm), e.g. inject@trixie,baked-networkd@bullseye "
                         "(default: %(default)s)")
    bb.add_argument("--runs", type=int, default=3, help="boots per scenario (default 3)")
    bb.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    bb.add_argument("--plot", type=Path, metavar="PNG", help="write a chart")
    bb.add_argument("--timeline", type=Path, metavar="PNG",
                    help="also write each scenario's systemd units on a time line (the "
                         "guests report every unit's timestamps; first run of each)")
    bb.add_argument("--later", action="store_true",
                    help="also measure a later boot of the same instance for each chosen "
                         "scenario that has one (inject, glean, cloud-init): a private "
                         "writable copy is booted once, then the second boot is measured")
    bb.add_argument("--bootchart", type=Path, metavar="DIR",
                    help="afterwards boot each scenario once more under systemd-bootchart "
                         "(as init; not measured, sampling costs time) and write its SVG "
                         "to DIR/<scenario>.svg")
    bb.set_defaults(func=cmd_bench_boot)
    ba = bsub.add_parser(
        "agent", help="the guest agent's own time on first and later boots (real guests)",
        description="Boot the inject image twice per run on a private writable copy and "
                    "report the agent's own time (its result line) on the first boot and "
                    "on the second boot of the same instance, systemd's view of the "
                    "agent's unit, and whether it finished before networking could start "
                    "(ifupdown-pre done).")
    ba.add_argument("--runs", type=int, default=3, help="runs, two boots each (default 3)")
    ba.add_argument("--imports", action="store_true",
                    help="also time module imports in the guest (one more boot) and on "
                         "this host: what each boot-path import would cost")
    ba.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    ba.set_defaults(func=cmd_bench_agent)
    bv = bsub.add_parser(
        "vendordata", help="the vendordata service against the local OpenStack peer",
        description="Against the real local peer (scripts/openstack-peer.sh start): the time "
                    "the service adds to nova's own drive build (all of nova's calls, "
                    "nova's InstanceMetadata + ConfigDriveBuilder, alternating rounds), "
                    "p50/p99 of cold and cached calls with nova's Keystone token, and "
                    "requests/s with 50 instances' drives built at once on one worker.")
    bv.add_argument("--rounds", type=int, default=4,
                    help="rounds of drive builds, one nova process each (default "
                         "%(default)s)")
    bv.add_argument("--drives", type=int, default=8,
                    help="drives per round and contender, interleaved (default %(default)s)")
    bv.add_argument("--cold", type=int, default=40, help="cold calls (default %(default)s)")
    bv.add_argument("--cached", type=int, default=1000,
                    help="cached calls (default %(default)s)")
    bv.add_argument("--instances", type=int, default=50,
                    help="drives built at once (default %(default)s)")
    bv.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    md = bv.add_argument_group(
        "the metadata path (--metadata-path instead of the drive-build figures above)")
    md.add_argument("--metadata-path", action="store_true",
                    help="the service as nova's metadata API calls it, past its fresh "
                         "window (the revision check), with a fleet of ports in the peer's "
                         "Neutron: nova's drive burst, p50/p99 per call, calls/s of one "
                         "worker under concurrent clients, guests served at the 1800 s "
                         "sync period")
    md.add_argument("--ports", type=int, default=1000,
                    help="ports in the fleet (default %(default)s)")
    md.add_argument("--ports-per-instance", type=int, default=2,
                    help="ports per instance, one per network (default %(default)s)")
    md.add_argument("--calls", type=int, default=500,
                    help="calls per measurement (default %(default)s)")
    md.add_argument("--clients", default="4,16", metavar="LIST",
                    help="concurrent clients, one measurement each (default %(default)s)")
    md.add_argument("--keep", action="store_true",
                    help="leave the fleet in Neutron for the next run (found again by "
                         "name; default: deleted at the end)")
    bv.set_defaults(func=cmd_bench_vendordata)
    bh = bsub.add_parser(
        "hotplug", help="NIC hot-plug (static against DHCP) and live changes per stack "
                        "(real guests)",
        description="Per run, boot each stack's inject image once (qemu-guest-agent, a "
                    "second tap link) and measure: a NIC hot-plugged with its static "
                    "config (hotplug attach) from the attach (QMP device_add) and from "
                    "the request to its first ARP answer; the same NIC hot-plugged with "
                    "no injected config, brought up by the image's own DHCP config with "
                    "dnsmasq answering at once; a Neutron change (a host route and a DNS "
                    "server) through the agent until the guest shows it. Prints medians "
                    "(min-max), the ratio static/DHCP from the same boots, and where the "
                    "time went after the attach (the guest's journal).")
    bh.add_argument("--stacks", default=",".join(STACKS), metavar="LIST",
                    help="comma-separated, interleaved per run (default: %(default)s)")
    bh.add_argument("--runs", type=int, default=3, help="boots per stack (default 3)")
    bh.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    bh.set_defaults(func=cmd_bench_hotplug)
    bm = bsub.add_parser(
        "metadata-hotplug", help="NIC hot-plug, detach and drift through stock nova's "
                                 "metadata API per stack, against DHCP and cloud-init's "
                                 "hotplug (real guests, the local OpenStack peer)",
        description="Issue 23's figures as medians. Per run, boot each stack's inject image "
                    "once, its instance made in the local OpenStack peer as nova has it "
                    "(nova's drive, nova's database record and its metadata API with [api] "
                    "metadata_cache_expiration at nova's default 15 s for every stack; "
                    "netinject's vendordata service as nova's DynamicJSON target, started "
                    "once). In each guest: CYCLES times a NIC attached as stock nova does "
                    "(Neutron port, attach_interface, QMP device_add; no DHCP server): "
                    "device_add to its first ARP answer on its static address, then "
                    "detached as nova does: device_del until eth1's config is gone from "
                    "the guest; once a Neutron change (DNS servers, host routes, the "
                    "port's address) until the guest shows it, the drift timer at "
                    "--period; last, the same NIC left to the image's own DHCP config "
                    "(dnsmasq answering at once): device_add to its first ARP answer. "
                    "Then cloud-init's own hotplug through the same nova (the "
                    "cloud-init-hotplug image, the ifupdown test bed's), CYCLES attaches "
                    "per boot. Prints medians (min-max) and counts per stack, the ratios "
                    "static/DHCP and static/cloud-init, and whether the goal 'ahead of "
                    "cloud-init's hotplug on every stack' is met. "
                    "Needs root (QEMU guests in network namespaces) and the local "
                    "OpenStack peer running (start it as root: scripts/openstack-peer.sh "
                    "start; found in $NETINJECT_PEER_DIR, default "
                    "/run/netinject-openstack-peer). Takes long: about 28 min under TCG "
                    "with the defaults (4 stacks and cloud-init x 2 boots x 2 cycles; a "
                    "boot 1.5-4 min with its drift, which waits up to a --period and a "
                    "sixth), less with "
                    "KVM; the first progress line gives the estimate for the options.")
    bm.add_argument("--stacks", default=",".join(STACKS), metavar="LIST",
                    help="comma-separated, interleaved per run (default: %(default)s)")
    bm.add_argument("--runs", type=int, default=2, metavar="N",
                    help="boots per stack (and of cloud-init's image; default %(default)s)")
    bm.add_argument("--cycles", type=int, default=2, metavar="K",
                    help="attach/detach cycles per boot (default %(default)s)")
    bm.add_argument("--period", type=int, default=60, metavar="S",
                    help="the drift timer's period, written to /etc/netinject/sync.conf "
                         "in the guest (60 to 604800; default %(default)s, the agent's "
                         "floor)")
    bm.add_argument("--no-peer", action="store_true",
                    help="leave out cloud-init's hotplug (no static/cloud-init ratio, no "
                         "goal)")
    bm.add_argument("--json", type=Path, metavar="FILE",
                    help="write every figure per run and cycle as JSON")
    bm.set_defaults(func=cmd_bench_metadata_hotplug)


def _check_outputs(*outputs: tuple[str, Path | None]) -> None:
    """Every output file a benchmark will write, checked before it boots anything."""
    check_outputs(outputs)


def _write_json(path: Path, data: object) -> None:
    """Every benchmark's --json: indented, whole or not at all (hostio.write_atomic: a
    failed write leaves the file as it was, never half a file)."""
    import json

    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def cmd_bench_drive(args: argparse.Namespace) -> int:
    from ...bench import drive as drive_bench

    _check_outputs(("--json", args.json))
    results = drive_bench.run(args.runs)
    if args.json is not None:
        _write_json(args.json, results)
    return 0


def cmd_bench_boot(args: argparse.Namespace) -> int:
    from ...bench import boot as bench_boot
    from ...bench import report
    from ...vm.progress import Progress

    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    from ...errors import UsageError

    if not names or args.runs < 1:
        raise UsageError("give scenarios and --runs >= 1")
    for n in names:
        try:
            scenario(n)
        except ValueError as exc:
            raise UsageError(f"--scenarios: {exc}") from None
    if args.later:
        def later(n: str) -> str:
            base, at, release = n.partition("@")
            return f"{base}-later{at}{release}"
        names += [later(n) for n in names
                  if f"{n.partition('@')[0]}-later" in SCENARIOS and later(n) not in names]
    _check_outputs(("--json", args.json), ("--plot", args.plot),
                   ("--timeline", args.timeline))
    if args.bootchart is not None:
        check_tree(args.bootchart, {PurePosixPath(f"{n}.svg"): None for n in names},
                   "--bootchart")
    results = bench_boot.run(names, args.runs, Progress(),
                             timeline=args.timeline is not None, bootchart=args.bootchart)
    print(report.format_table(results))
    if args.json is not None:
        _write_json(args.json, results.to_json())
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot is not None:
        report.plot(results, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.timeline is not None:
        report.plot_timeline(results, args.timeline)
        print(f"wrote {args.timeline}", file=sys.stderr)
    return 0


def cmd_bench_agent(args: argparse.Namespace) -> int:
    from ...bench import agent as bench_agent
    from ...vm.progress import Progress

    if args.runs < 1:
        from ...errors import UsageError

        raise UsageError("give --runs >= 1")
    _check_outputs(("--json", args.json))
    costs = bench_agent.agent_costs(args.runs, Progress(), imports=args.imports)
    print(bench_agent.format_report(costs))
    if args.json is not None:
        _write_json(args.json, costs.to_json())
    return 0


def cmd_bench_vendordata(args: argparse.Namespace) -> int:
    from ...bench import vendordata
    from ...errors import UsageError

    _check_outputs(("--json", args.json))
    if args.metadata_path:
        return _bench_metadata_path(args)
    for name in ("rounds", "drives", "cold", "cached", "instances"):
        if getattr(args, name) < (2 if name in ("drives", "cold") else 1):
            raise UsageError(f"--{name}: too small")
    results = vendordata.run(args.rounds, args.drives, args.cold, args.cached,
                             args.instances)
    if args.json is not None:
        _write_json(args.json, results)
    return 0


def _bench_metadata_path(args: argparse.Namespace) -> int:
    from ...bench import metadata_path
    from ...errors import UsageError

    try:
        clients = tuple(int(c) for c in args.clients.split(","))
    except ValueError:
        raise UsageError(f"--clients: {args.clients!r} is not a list of numbers") from None
    if not clients or min(clients) < 1:
        raise UsageError("--clients: give numbers of at least 1")
    if not 1 <= args.ports_per_instance <= 8:
        raise UsageError("--ports-per-instance: 1 to 8")
    if args.ports < args.ports_per_instance or args.calls < 2 or args.drives < 1:
        raise UsageError("--ports, --calls or --drives: too small")
    results = metadata_path.run(args.ports, args.ports_per_instance, args.calls, clients,
                                args.drives, args.keep)
    if args.json is not None:
        _write_json(args.json, results)
    return 0


def _stacks(text: str) -> list[str]:
    """--stacks of the hot-plug benches: known stack names, each once (UsageError)."""
    from ...errors import UsageError

    stacks = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in stacks if n not in STACKS]
    if unknown or not stacks:
        raise UsageError(f"--stacks: unknown stack(s) {', '.join(unknown)}; known: "
                         f"{', '.join(STACKS)}" if unknown else "--stacks: give stacks")
    if len(set(stacks)) != len(stacks):
        raise UsageError("--stacks: a stack given twice")
    return stacks


def cmd_bench_hotplug(args: argparse.Namespace) -> int:
    from ...bench import hotplug as bench_hotplug
    from ...errors import UsageError
    from ...vm.progress import Progress

    stacks = _stacks(args.stacks)
    if args.runs < 1:
        raise UsageError(f"--runs {args.runs}: give 1 or more")
    _check_outputs(("--json", args.json))
    results = bench_hotplug.run(stacks, args.runs, Progress())
    print(bench_hotplug.format_table(results))
    if args.json is not None:
        _write_json(args.json, results.to_json())
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def cmd_bench_metadata_hotplug(args: argparse.Namespace) -> int:
    import os

    from ...bench import metadata_hotplug
    from ...errors import UsageError
    from ...vm.progress import Progress

    stacks = _stacks(args.stacks)
    for name, value in (("--runs", args.runs), ("--cycles", args.cycles)):
        if value < 1:
            raise UsageError(f"{name} {value}: give 1 or more")
    if not 60 <= args.period <= 604800:
        raise UsageError(f"--period {args.period}: 60 to 604800 seconds (what the guest's "
                         "sync.conf takes)")
    _check_outputs(("--json", args.json))
    if os.geteuid() != 0:
        raise UsageError("bench metadata-hotplug needs root (QEMU guests in network "
                         "namespaces, the OpenStack peer's chroot)")
    results = metadata_hotplug.run(stacks, args.runs, args.cycles, args.period,
                                   with_peer=not args.no_peer, progress=Progress())
    print(metadata_hotplug.format_table(results))
    if args.json is not None:
        _write_json(args.json, results.to_json())
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
