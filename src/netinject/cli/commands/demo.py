"""netinject demo: the whole flow on the built-in example."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...render import Options


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo", help="the whole flow on the built-in example: render, drive, boot, measure",
        description="Render the built-in example instance, build its config drive, boot a "
                    "Debian guest with the netinject agent under QEMU and show its "
                    "time-to-network next to the same image asking DHCP.")
    demo.add_argument("--skip-dhcp", action="store_true",
                      help="boot only the inject guest (skip the ~80 s DHCP-timeout boot)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from ... import drive
    from ...bench import boot as bench_boot
    from ...bench import report
    from ...render import FORMATS, render_all
    from ...sources.neutron import parse_document
    from ...vm import testbed as vm
    from ...vm.progress import Progress

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
    print(report.format_table(data))
    return 0
