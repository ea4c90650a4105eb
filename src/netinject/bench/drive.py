"""Drive build time: netinject vs nova's recipe, measured in the same run.

nova builds a vfat config drive with ``mkfs.vfat`` and then copies the tree in (through a
loop mount, which needs root; here the same copy is done with one ``mcopy -s``, as the
issue specifies), and an iso9660 drive with ``genisoimage``. Runs are interleaved
(A B C A B C) so machine drift hits every contender alike.

Two comparisons, each like with like:

* ``image``: from the same rendered contents to an image file. Rendering every stack's
  files, the JSON dumps and the manifest's hashes are done once beforehand and timed for
  neither; nova's staging tree is written beforehand too (untimed, which favours nova:
  nova writes it on every build).
* ``end-to-end``: from the validated instance to an image file, rendering included in
  both: netinject's ``drive.build`` (render, JSON, hashes, image, fsync and rename into
  place) against the same render plus writing nova's tree plus nova's recipe (which
  neither fsyncs nor renames: that favours nova).
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
from ..model import Instance
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


def _write_tree(data: drive.DriveContents, tree: Path) -> Path:
    for path, content in data.files.items():
        target = tree / path.as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return tree


def _nova_vfat_rendered(instance: Instance, scratch: Path, out: Path) -> None:
    """nova's recipe with the rendering timed too: render, write the tree into a new
    directory, build (the tree is left for the run's cleanup, untimed)."""
    tree = Path(tempfile.mkdtemp(dir=scratch))
    _nova_vfat(_write_tree(drive.contents(instance, Options()), tree), out)


NOVA_VFAT = "nova vfat (mkfs.vfat+mcopy)"
NOVA_ISO = "nova iso9660 (genisoimage)"
SCOPES = {
    "image": "render, JSON and hashes done beforehand, timed for neither",
    "end-to-end": "render, JSON and hashes timed in both",
}


def run(runs: int = 15, nic_counts: tuple[int, ...] = (1, 8), out: Any = sys.stdout
        ) -> dict[str, Any]:
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="netinject-bench-") as tmp:
        root = Path(tmp)
        for n in nic_counts:
            instance = parse_document(synthetic_instance(n)).instance
            data = drive.contents(instance, Options())
            vol = drive.volume_id(instance.uuid)
            tree = _write_tree(data, root / f"tree{n}")
            # (scope, builder) -> (the build, the nova contender it is compared with)
            contenders: dict[tuple[str, str], tuple[Callable[[Path], object], str]] = {
                ("image", "netinject vfat"): (partial(drive.build_vfat, data, vol_id=vol),
                                              NOVA_VFAT),
                ("image", NOVA_VFAT): (partial(_nova_vfat, tree), NOVA_VFAT),
                ("image", "netinject iso9660"): (partial(drive.build_iso, data, vol_id=vol),
                                                 NOVA_ISO),
                ("image", NOVA_ISO): (partial(_nova_iso, tree), NOVA_ISO),
                ("end-to-end", "netinject vfat (drive.build)"): (
                    partial(drive.build, instance, fmt="vfat"), NOVA_VFAT + " + render"),
                ("end-to-end", NOVA_VFAT + " + render"): (
                    partial(_nova_vfat_rendered, instance, root),
                    NOVA_VFAT + " + render"),
            }
            times: dict[tuple[str, str], list[float]] = {k: [] for k in contenders}
            for r in range(runs):
                for key, (fn, _peer) in contenders.items():
                    target = root / f"img-{n}-{r}"
                    t0 = time.perf_counter()
                    fn(target)
                    times[key].append(time.perf_counter() - t0)
                    target.unlink()
                print(f"  {n} NIC(s): run {r + 1}/{runs}", file=sys.stderr, end="\r")
            print(file=sys.stderr)
            for (scope, name), values in times.items():
                med, lo, hi = summary(values)
                ratio = med / summary(times[scope, contenders[scope, name][1]])[0]
                rows.append([str(n), scope, name, f"{med * 1000:.1f}", f"{lo * 1000:.1f}",
                             f"{hi * 1000:.1f}", f"{ratio:.2f}x"])
                results[f"{n}nic/{scope}/{name}"] = {"times_s": values, "median_s": med,
                                                     "ratio_to_nova": ratio}
    print(f"drive build time, {runs} interleaved runs each (ms)", file=out)
    for scope, what in SCOPES.items():
        print(f"  {scope}: {what}", file=out)
    print(table(["NICs", "scope", "builder", "median", "min", "max", "vs nova"], rows),
          file=out)
    return results
