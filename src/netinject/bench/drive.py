"""Drive build time: netinject vs nova's recipe, measured in the same run.

nova builds a vfat config drive with ``mkfs.vfat`` and then copies the tree in (through a
loop mount, which needs root; here the same copy is done with mtools, as the issue
specifies), and an iso9660 drive with ``genisoimage``. Runs are interleaved (A B C A B C)
so machine drift hits every contender alike.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from .. import drive
from ..render import Options
from ..sources.neutron import parse_document
from .stats import summary, table


def synthetic_instance(nics: int) -> dict[str, Any]:
    """An instance document with ``nics`` NICs, each on its own /24 with two routes."""
    ports, subnets, networks = [], [], []
    for i in range(nics):
        net, sub, port = (str(uuid.UUID(int=(k << 8) + i + 1)) for k in (1, 2, 3))
        networks.append({"id": net, "mtu": 1450})
        subnets.append({
            "id": sub, "network_id": net, "ip_version": 4, "cidr": f"10.{i}.0.0/24",
            "gateway_ip": f"10.{i}.0.1", "enable_dhcp": True,
            "dns_nameservers": [f"10.{i}.0.2"],
            "host_routes": [{"destination": f"172.{16 + i}.0.0/16", "nexthop": f"10.{i}.0.1"},
                            {"destination": "169.254.169.254/32", "nexthop": f"10.{i}.0.1"}]})
        ports.append({"id": port, "mac_address": f"fa:16:3e:00:{i:02x}:01", "network_id": net,
                      "fixed_ips": [{"subnet_id": sub, "ip_address": f"10.{i}.0.10"}]})
    return {"instance": {"uuid": str(uuid.UUID(int=nics)), "hostname": "bench"},
            "image": {"properties": {"support_inject_ip": "true"}},
            "system_metadata": {}, "ports": ports, "subnets": subnets, "networks": networks}


def _nova_vfat(tree: Path, out: Path) -> None:
    # nova.virt.configdrive: truncate to 64 MiB, mkfs.vfat -n config-2, copy the tree.
    with out.open("wb") as fh:
        fh.truncate(drive.DEFAULT_SIZE)
    subprocess.run(["mkfs.vfat", "-n", "config-2", str(out)], check=True, capture_output=True)
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    subprocess.run(["mcopy", "-s", "-i", str(out), *map(str, sorted(tree.iterdir())), "::/"],
                   check=True, capture_output=True, env=env)


def _nova_iso(tree: Path, out: Path) -> None:
    subprocess.run(["genisoimage", "-o", str(out), "-ldots", "-allow-lowercase",
                    "-allow-multidot", "-l", "-publisher", "netinject-bench", "-quiet", "-J",
                    "-r", "-V", "config-2", str(tree)], check=True, capture_output=True)


def run(runs: int = 15, nic_counts: tuple[int, ...] = (1, 8), out: Any = sys.stdout
        ) -> dict[str, Any]:
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="netinject-bench-") as tmp:
        root = Path(tmp)
        for n in nic_counts:
            instance = parse_document(synthetic_instance(n)).instance
            data = drive.contents(instance, Options())
            tree = root / f"tree{n}"
            for path, content in data.files.items():
                target = tree / path.as_posix()
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            contenders: dict[str, Callable[[Path], object]] = {
                "netinject vfat": partial(drive.build, instance, fmt="vfat"),
                "nova vfat (mkfs.vfat+mcopy)": partial(_nova_vfat, tree),
                "netinject iso9660": partial(drive.build, instance, fmt="iso9660"),
                "nova iso9660 (genisoimage)": partial(_nova_iso, tree),
            }
            times: dict[str, list[float]] = {k: [] for k in contenders}
            for r in range(runs):
                for name, fn in contenders.items():
                    target = root / f"img-{n}-{r}"
                    t0 = time.perf_counter()
                    fn(target)
                    times[name].append(time.perf_counter() - t0)
                    target.unlink()
                print(f"  {n} NIC(s): run {r + 1}/{runs}", file=sys.stderr, end="\r")
            print(file=sys.stderr)
            for name, values in times.items():
                med, lo, hi = summary(values)
                peer = ("nova vfat (mkfs.vfat+mcopy)" if "vfat" in name
                        else "nova iso9660 (genisoimage)")
                ratio = med / summary(times[peer])[0]
                rows.append([str(n), name, f"{med * 1000:.1f}", f"{lo * 1000:.1f}",
                             f"{hi * 1000:.1f}", f"{ratio:.2f}x"])
                results[f"{n}nic/{name}"] = {"times_s": values, "median_s": med,
                                             "ratio_to_nova": ratio}
    print(f"drive build time, {runs} interleaved runs each (ms)", file=out)
    print(table(["NICs", "builder", "median", "min", "max", "vs nova"], rows), file=out)
    return results
