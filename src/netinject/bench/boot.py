"""Time-to-network benchmark: boot real guests, scenarios interleaved (A B C A B C ...) so
this machine's drift hits all alike; medians, min, max, ratios to ``inject``."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from ..hostio import write_atomic, write_tree
from ..vm.harness import BootResult, HarnessError, boot, kvm_usable
from ..vm.image import BOOTCHART_INIT, VariantImage
from ..vm.progress import Progress
from ..vm.scenarios import SCENARIOS, Prepared
from .stats import table


@contextlib.contextmanager
def writable_copy(image: VariantImage) -> Iterator[VariantImage]:
    """A private writable copy of a variant image (sparse), for boots that must see what
    an earlier boot of the same instance wrote; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="netinject-instance-") as tmp:
        copy = Path(tmp) / "root.img"
        subprocess.run(["cp", "--sparse=always", str(image.image), str(copy)], check=True)
        yield dataclasses.replace(image, image=copy)


def boot_scenario(prepared: Prepared, name: str, accel: str, extra_append: str = "",
                  progress: Progress | None = None) -> BootResult:
    """One measured boot of a scenario. A later-boot scenario first boots a private
    writable copy of its image once (not measured), then measures the second boot."""
    spec = dataclasses.replace(prepared.spec(name, accel), extra_append=extra_append)
    if not SCENARIOS[name].later:
        return boot(spec)
    with writable_copy(spec.image) as image:
        first = dataclasses.replace(spec, image=image, snapshot=False, extra_append="")
        if progress is not None:
            progress(f"  {name}: first boot of the instance (not measured) ...")
        if boot(first).boot_s is None:
            raise HarnessError(f"{name}: the instance's first boot did not finish")
        return boot(dataclasses.replace(spec, image=image, snapshot=False))


def run(names: Sequence[str], runs: int, progress: Progress,
        timeline: bool = False, bootchart: Path | None = None) -> dict[str, Any]:
    """Boot every scenario ``runs`` times, interleaved. ``timeline``: the guests also
    report every unit's start and end (systemd's timestamps), kept per scenario from its
    first run for ``plot_timeline``. ``bootchart``: afterwards, one more boot per scenario
    under systemd-bootchart (not measured: sampling costs time), its SVG written there."""
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: "
                         f"{', '.join(SCENARIOS)}")
    prepared = Prepared(tuple(names), progress)
    timelines: dict[str, dict[str, list[float]]] = {}
    charts: dict[str, str] = {}
    try:
        accel = "kvm" if kvm_usable(next(iter(prepared.images.values()))) else "tcg"
        progress(f"accelerator: {accel}")
        results: dict[str, dict[str, list[Any]]] = {
            n: {"time_to_network_s": [], "boot_s": [], "first_garp_s": [], "agent_ms": [],
                "agent_unit_ms": [], "userspace_s": [], "network_unit_start_s": [],
                "network_unit_ready_s": [], "agent_slack_ms": []} for n in names}
        total = runs * len(names)
        k = 0
        for r in range(runs):
            for name in names:
                k += 1
                progress(f"boot {k}/{total} (run {r + 1}/{runs}): {name} ...")
                res = boot_scenario(prepared, name, accel,
                                    "netinject.timeline" if timeline else "", progress)
                out = results[name]
                if timeline and name not in timelines:
                    timelines[name] = {u: list(t) for u, t in
                                       res.unit_times("all-unit-times").items()}
                out["time_to_network_s"].append(res.time_to_network_s)
                out["first_garp_s"].append(res.first_garp_s)
                out["boot_s"].append(res.boot_s)
                out["agent_ms"].append(res.agent_cost_ms())
                unit = SCENARIOS[name].agent_unit
                times = res.unit_times()
                agent_unit = times.get(unit) if unit else None
                out["agent_unit_ms"].append(round(agent_unit[1] - agent_unit[0], 1)
                                            if agent_unit else None)
                network = times.get(SCENARIOS[name].network_unit)
                out["network_unit_start_s"].append(round(network[0] / 1000, 2)
                                                   if network else None)
                out["network_unit_ready_s"].append(round(network[1] / 1000, 2)
                                                   if network else None)
                # How long before the stack's network service started the agent was done
                # (it is ordered before it, so >= 0; what matters is how much).
                out["agent_slack_ms"].append(round(network[0] - agent_unit[1], 1)
                                             if network and agent_unit
                                             and unit == "netinject.service" else None)
                out["userspace_s"].append(_userspace_s(res.report.get("systemd-analyze", "")))
                ttn = res.time_to_network_s
                progress(f"  {name}: network after "
                         + (f"{ttn:.1f} s" if ttn is not None else "never")
                         + f", boot finished after {fmt(res.boot_s)} s")
        if bootchart is not None:
            for name in names:
                progress(f"bootchart boot: {name} (systemd-bootchart as init; not measured)")
                res = boot_scenario(prepared, name, accel,
                                    f"init={BOOTCHART_INIT} netinject.bootchart", progress)
                svg = res.bootchart_svg()
                if svg is None:
                    raise HarnessError(f"{name}: the guest reported no bootchart")
                out_file, = write_tree(bootchart, {PurePosixPath(f"{name}.svg"): svg})
                charts[name] = str(out_file)
                progress(f"  wrote {out_file}")
    finally:
        prepared.close()
    summary: dict[str, Any] = {}
    for name, out in results.items():
        values = [v for v in out["time_to_network_s"] if v is not None]
        summary[name] = {
            **out,
            "boot_median_s": _median(out["boot_s"]),
            "about": SCENARIOS[name].about,
            "agent_unit": SCENARIOS[name].agent_unit,
            "agent_unit_median_ms": _median(out["agent_unit_ms"]),
            "network_unit": SCENARIOS[name].network_unit,
            "network_unit_start_median_s": _median(out["network_unit_start_s"]),
            "network_unit_ready_median_s": _median(out["network_unit_ready_s"]),
            "median_s": _median(values),
            "min_s": min(values) if values else None,
            "max_s": max(values) if values else None,
            "failures": len(out["time_to_network_s"]) - len(values),
        }
    return {"scenarios": summary, "accel": accel, "runs": runs, "timelines": timelines,
            "bootcharts": charts,
            "host": platform.node(), "kernel": platform.release(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _duration_ms(text: str) -> float | None:
    total = 0.0
    for tok in text.split():
        for suffix, scale in (("ms", 1.0), ("us", 0.001), ("min", 60000.0), ("s", 1000.0)):
            if tok.endswith(suffix):
                try:
                    total += float(tok[: -len(suffix)]) * scale
                except ValueError:
                    return None
                break
        else:
            return None
    return total


def _userspace_s(analyze: str) -> float | None:
    import re

    m = re.search(r"\+ ([0-9.]+(?:min )?[0-9.]*m?s) \(userspace\)", analyze)
    if not m:
        return None
    ms = _duration_ms(m.group(1))
    return ms / 1000 if ms is not None else None


def fmt(v: float | None) -> str:
    return f"{v:.1f}" if v is not None else "-"


def format_table(data: dict[str, Any]) -> str:
    sc = data["scenarios"]
    ref = sc.get("inject", {}).get("median_s")
    bref = sc.get("inject", {}).get("boot_median_s")
    rows = []
    for name, s in sc.items():
        med = s["median_s"]
        ratio = f"{med / ref:.2f}x" if med is not None and ref else "-"
        bmed = s.get("boot_median_s")
        bratio = f"{bmed / bref:.2f}x" if bmed is not None and bref else "-"
        n = len(s["time_to_network_s"])
        unit = s.get("agent_unit_median_ms")
        rows.append([name, fmt(med) if med is not None else "never", fmt(s["min_s"]),
                     fmt(s["max_s"]), ratio, f"{n - s['failures']}/{n}", fmt(bmed), bratio,
                     f"{unit:.0f} ({s['agent_unit']})" if unit is not None else "-"])
    lines = [f"time to network (s): QEMU start -> the guest's first ARP answer; boot: QEMU "
             f"start -> boot finished (systemd); config unit: the unit that puts the "
             f"network config in place, Starting to Finished (ms, systemd's timestamps); "
             f"accel={data['accel']}, {data['runs']} interleaved run(s) per scenario",
             table(["scenario", "network median", "min", "max", "vs inject", "reached",
                    "boot median", "vs inject", "config unit median"], rows)]
    if "inject" in sc and "baked-static" in sc and sc["baked-static"]["median_s"] and ref:
        lines.append(f"cost of injection (inject - baked-static medians): "
                     f"{ref - sc['baked-static']['median_s']:+.2f} s")
    for name in ("inject", "inject-later"):
        agent = [v for v in sc.get(name, {}).get("agent_ms", []) if v is not None]
        unit = sc.get(name, {}).get("agent_unit_median_ms")
        if agent:
            lines.append(f"{name}: the agent's own time (its log's result line): median "
                         f"{statistics.median(agent):.1f} ms {agent}; its unit as systemd "
                         f"saw it (incl. Python's start): median {fmt(unit)} ms "
                         f"{sc[name]['agent_unit_ms']}")
    for stack in ("networkd", "netplan", "nm"):
        inj, floor = sc.get(f"inject-{stack}"), sc.get(f"baked-{stack}")
        stall = sc.get(f"dhcp-timeout-{stack}")
        if inj is None:
            continue
        parts = [f"{stack}: inject {fmt(inj['median_s'])} s"]
        if floor and floor["median_s"] and inj["median_s"]:
            gap = inj["median_s"] - floor["median_s"]
            parts.append(f"floor (baked) {fmt(floor['median_s'])} s, {gap:+.2f} s "
                         f"({gap / floor['median_s'] * 100:+.1f}%)")
        if stall:
            reached = fmt(stall["median_s"]) + " s" if stall["median_s"] else "never"
            parts.append(f"DHCP stall: network {reached}, boot finished "
                         f"{fmt(stall['boot_median_s'])} s")
        agent = [v for v in inj["agent_ms"] if v is not None]
        slack = [v for v in inj["agent_slack_ms"] if v is not None]
        if agent:
            parts.append(f"agent {statistics.median(agent):.1f} ms (unit "
                         f"{fmt(inj['agent_unit_median_ms'])} ms), done {slack} ms before "
                         f"{inj['network_unit']} started; it started at "
                         f"{fmt(inj['network_unit_start_median_s'])} s and was up at "
                         f"{fmt(inj['network_unit_ready_median_s'])} s (baked: "
                         f"{_pair(floor)})")
        lines.append("; ".join(parts))
    for base in ("inject", "glean", "cloud-init"):
        first, later = sc.get(base, {}).get("median_s"), sc.get(f"{base}-later", {}).get(
            "median_s")
        if first is not None and later is not None:
            lines.append(f"{base}: first boot {first:.1f} s, later boot {later:.1f} s "
                         f"({later - first:+.1f} s)")
    return "\n".join(lines)


def plot(data: dict[str, Any], out: Path) -> None:
    """Two bars per scenario: time to network (never = hatched at the boot time) and
    time until boot finished; dots are the individual runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = data["scenarios"]
    names = list(sc)[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.8 * len(names) + 1.8))
    top = 1.0
    for i, n in enumerate(names):
        s = sc[n]
        med, bmed = s["median_s"], s.get("boot_median_s")
        if med is not None:
            ax.barh(i + 0.2, med, height=0.38, color="#2a9d8f",
                    label="time to network" if i == 0 else None)
            pts = [v for v in s["time_to_network_s"] if v is not None]
            ax.scatter(pts, [i + 0.2] * len(pts), color="black", s=10, zorder=3)
            ax.text(max(med, *pts) + 0.8, i + 0.2, f"{med:.1f} s", va="center", fontsize=8)
            top = max(top, max(pts))
        else:
            ax.text(0.5, i + 0.2, "network never came up", va="center", fontsize=8,
                    color="#c0392b")
        if bmed is not None:
            ax.barh(i - 0.2, bmed, height=0.38, color="#b8c4cc",
                    label="boot finished" if i == 0 else None)
            ax.text(bmed + 0.5, i - 0.2, f"{bmed:.1f} s", va="center", fontsize=8)
            top = max(top, bmed)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("seconds from QEMU start (median of runs; dots = individual runs)")
    ax.set_title(f"netinject: time to network per scenario "
                 f"({data['accel']}, {data['runs']} run(s) each)")
    ax.set_xlim(0, top * 1.18)
    handles, _labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, out, dpi=110)
    plt.close(fig)


def _save_figure(fig: Any, out: Path, dpi: int) -> None:
    """The chart rendered in memory (the format from the file name, as savefig does),
    then written like every output (hostio: whole or not at all, never through a
    device, FIFO or link)."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=out.suffix[1:].lower() or None)
    write_atomic(out, buf.getvalue())


def save_json(data: dict[str, Any], out: Path) -> None:
    write_atomic(out, (json.dumps(data, indent=2) + "\n").encode())


IMPORT_PROBE = ("os", "struct", "hashlib", "json", "re", "socket", "argparse",
                "encodings.utf_16_le")


def import_costs_native() -> dict[str, float]:
    """The same import probe as the guest's, on this host's Debian python3 (native
    speed: what a KVM guest would see, roughly), median of 5 fresh interpreters each."""
    out: dict[str, float] = {}
    for mod in IMPORT_PROBE:
        times = []
        for _ in range(5):
            code = (f"import time; t = time.perf_counter(); import {mod}; "
                    "print((time.perf_counter() - t) * 1000)")
            times.append(float(subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", code],
                                              capture_output=True, text=True,
                                              check=True).stdout))
        out[mod] = statistics.median(times)
    return out


def agent_costs(runs: int, progress: Progress, imports: bool = False) -> dict[str, Any]:
    """The agent's own time on a first and a second boot of the same instance (its result
    line: from the launcher's first line to its last), on a private writable copy of the
    inject image per run; systemd's view of the agent's unit on the first boots, and
    whether it finished before networking could start anyway (ifupdown-pre done).
    ``imports``: one more boot that times module imports in the guest (TCG), beside the
    same on this host (native)."""
    prepared = Prepared(("inject",), progress)
    first: list[float | None] = []
    first_cpu: list[float | None] = []
    second: list[float | None] = []
    unit_ms: list[float | None] = []
    slack_ms: list[float | None] = []
    off_path: list[bool | None] = []
    logs: list[str] = []
    guest_imports: dict[str, float] = {}
    try:
        accel = "kvm" if kvm_usable(prepared.images["inject"]) else "tcg"
        for r in range(runs):
            with writable_copy(prepared.images["inject"]) as image:
                spec = dataclasses.replace(prepared.spec("inject", accel), image=image,
                                           snapshot=False)
                for n, out in ((1, first), (2, second)):
                    progress(f"agent cost run {r + 1}/{runs}: boot {n} ...")
                    res = boot(spec)
                    out.append(res.agent_cost_ms())
                    if n == 1:
                        first_cpu.append(res.agent_cpu_ms())
                        times = res.unit_times()
                        agent_unit = times.get("netinject.service")
                        gate = times.get("ifupdown-pre.service")
                        unit_ms.append(round(agent_unit[1] - agent_unit[0], 1)
                                       if agent_unit else None)
                        slack_ms.append(round(gate[1] - agent_unit[1], 1)
                                        if agent_unit and gate else None)
                        off_path.append(res.agent_off_critical_path())
                    logs.append(res.agent_log)
                    progress(f"  boot {n}: agent {fmt(res.agent_cost_ms())} ms "
                             f"({res.agent_log.splitlines()[-1] if res.agent_log else 'no log'})")
        if imports:
            progress("import probe boot ...")
            res = boot(dataclasses.replace(prepared.spec("inject", accel),
                                           extra_append="netinject.probe-imports"))
            for line in res.report.get("import-costs", "").splitlines():
                name, _, ms = line.partition(" ")
                if ms:
                    guest_imports[name] = float(ms)
    finally:
        prepared.close()
    return {"accel": accel, "runs": runs, "first_boot_ms": first, "second_boot_ms": second,
            "first_boot_median_ms": _median(first),
            "first_boot_cpu_ms": first_cpu,
            "first_boot_cpu_median_ms": _median(first_cpu),
            "second_boot_median_ms": _median(second),
            "first_boot_unit_ms": unit_ms,
            "first_boot_unit_median_ms": _median(unit_ms),
            "first_boot_slack_before_networking_ms": slack_ms,
            "first_boot_off_critical_path": off_path,
            "import_costs_guest_ms": guest_imports,
            "import_costs_native_ms": import_costs_native() if imports else {},
            "logs": logs}


def _pair(s: dict[str, Any] | None) -> str:
    """'started at X s, up at Y s' of a scenario's network unit (medians)."""
    if s is None:
        return "-"
    return (f"{fmt(s.get('network_unit_start_median_s'))} s and "
            f"{fmt(s.get('network_unit_ready_median_s'))} s")


def _median(values: Sequence[float | None]) -> float | None:
    ok = [v for v in values if v is not None]
    return statistics.median(ok) if ok else None


# Units on the way to network in the images the benchmark boots: udev (NIC names, the
# drive's by-label link), the agent, what networking waits for, the network services
# and cloud-init's stages. The longest other units are added per scenario.
PATH_UNITS = (
    "systemd-udevd.service", "systemd-udev-trigger.service", "systemd-udev-settle.service",
    "netinject.service", "cloud-init-local.service", "glean-early.service",
    "glean@eth0.service", "ifupdown-pre.service", "netinject-announce.service",
    "systemd-networkd-wait-online.service", "NetworkManager-wait-online.service",
    "networking.service", "systemd-networkd.service", "NetworkManager.service",
    "network.target", "network-online.target", "cloud-init.service",
    "cloud-config.service", "cloud-final.service", "multi-user.target",
)
HIGHLIGHT = {"netinject.service": "#2a9d8f", "networking.service": "#e76f51",
             "systemd-networkd.service": "#e76f51", "NetworkManager.service": "#e76f51",
             "cloud-init-local.service": "#8d5fd3", "glean-early.service": "#8d5fd3",
             "glean@eth0.service": "#8d5fd3", "ifupdown-pre.service": "#e9c46a"}


def timeline_units(times: dict[str, list[float]], extra: int = 4) -> list[str]:
    """The units a scenario's timeline shows, in start order: PATH_UNITS that ran, and
    the ``extra`` longest others (what else the boot spent its time on)."""
    shown = [u for u in PATH_UNITS if u in times]
    others = sorted((u for u in times if u not in shown and not u.endswith(".target")),
                    key=lambda u: times[u][1] - times[u][0], reverse=True)[:extra]
    return sorted(shown + others, key=lambda u: (times[u][0], u))


def plot_timeline(data: dict[str, Any], out: Path) -> None:
    """One panel per scenario, one above another on a shared time axis (seconds since
    the kernel started, systemd's monotonic clock): a bar per unit from its start to the
    moment it was up (a oneshot: done)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timelines: dict[str, dict[str, list[float]]] = data.get("timelines") or {}
    names = [n for n in data["scenarios"] if n in timelines]
    if not names:
        raise ValueError("no unit timestamps in the data (run with --timeline)")
    rows = {n: timeline_units(timelines[n]) for n in names}
    fig, axes = plt.subplots(len(names), 1, sharex=True, squeeze=False,
                             figsize=(11, sum(0.28 * len(r) + 0.8 for r in rows.values())),
                             gridspec_kw={"height_ratios": [len(rows[n]) + 2 for n in names]},
                             layout="constrained")
    for ax, name in zip((a[0] for a in axes), names, strict=True):
        times = timelines[name]
        units = rows[name]
        for y, unit in enumerate(units):
            start, end = (v / 1000 for v in times[unit])
            color = HIGHLIGHT.get(unit, "#9aa5b1")
            ax.barh(y, max(end - start, 0.05), left=start, color=color, height=0.7)
            ax.text(end + 0.3, y, f"{end - start:.2f} s", va="center", fontsize=7)
        ax.set_yticks(range(len(units)), units, fontsize=7)
        ax.invert_yaxis()
        ttn = data["scenarios"][name].get("median_s")
        ax.set_title(f"{name}: " + (f"network after {ttn:.1f} s from QEMU start"
                                    if ttn is not None else "network never came up"),
                     fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1][0].set_xlabel("seconds since the kernel started (systemd's unit timestamps; "
                           "first run of each scenario)")
    fig.suptitle(f"netinject: where boot time goes ({data['accel']})")
    _save_figure(fig, out, dpi=100)
    plt.close(fig)
