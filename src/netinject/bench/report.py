"""Time-to-network benchmark, the presenting side: the text table, the chart (--plot) and
the unit timeline (--timeline) of a :class:`~netinject.bench.boot.BootResults`. Charts
are drawn with matplotlib (the ``bench`` extra) and written through hostio."""

from __future__ import annotations

import io
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..hostio import write_atomic
from .boot import BootResults, ScenarioResult
from .stats import fmt, table

if TYPE_CHECKING:
    from matplotlib.axes import Axes

HEADERS = ["scenario", "network median", "min", "max", "vs inject", "reached",
           "boot median", "vs inject", "config unit median"]


# Per stack, the scenarios of its line: inject, its floor (the same config baked into
# the image) and its DHCP stall.
STACK_SCENARIOS = {"ifupdown": ("inject", "baked-static", "dhcp-timeout"),
                   **{s: (f"inject-{s}", f"baked-{s}", f"dhcp-timeout-{s}")
                      for s in ("networkd", "netplan", "nm")}}


def _release(name: str) -> str:
    """A scenario name's release suffix: '@trixie', or '' (bookworm)."""
    _, at, release = name.partition("@")
    return at + release


def format_table(results: BootResults) -> str:
    """The figures as text: one row per scenario (ratios to ``inject`` of the same Debian
    release), then per release the comparisons that answer the benchmark's questions:
    what injection costs, what the agent costs, each stack against its baked floor and
    its DHCP stall, and what a later boot of the same instance saves."""
    sc = results.scenarios
    lines = [f"time to network (s): QEMU start -> the guest's first ARP answer; boot: QEMU "
             f"start -> boot finished (systemd); config unit: the unit that puts the "
             f"network config in place, Starting to Finished (ms, systemd's timestamps); "
             f"accel={results.accel}, {results.runs} interleaved run(s) per scenario",
             table(HEADERS, [_row(name, s, sc.get("inject" + _release(name)))
                             for name, s in sc.items()])]
    for rel in dict.fromkeys(_release(name) for name in sc):
        lines += _injection_cost(sc, rel)
        lines += _agent_lines(sc, rel)
        lines += [line for stack in STACK_SCENARIOS
                  if (line := _stack_line(stack, sc, rel)) is not None]
        lines += _later_lines(sc, rel)
    return "\n".join(lines)


def _ratio(value: float | None, ref: float | None) -> str:
    return f"{value / ref:.2f}x" if value is not None and ref else "-"


def _row(name: str, s: ScenarioResult, ref: ScenarioResult | None) -> list[str]:
    """A scenario's table row; ratios against ``ref`` (inject) where it was measured."""
    med, bmed, unit = s.median_s, s.boot_median_s, s.agent_unit_median_ms
    n = len(s.boots.time_to_network_s)
    return [name, fmt(med) if med is not None else "never", fmt(s.min_s), fmt(s.max_s),
            _ratio(med, ref.median_s if ref else None), f"{n - s.failures}/{n}",
            fmt(bmed), _ratio(bmed, ref.boot_median_s if ref else None),
            f"{unit:.0f} ({s.agent_unit})" if unit is not None else "-"]


def _injection_cost(sc: Mapping[str, ScenarioResult], rel: str = "") -> list[str]:
    """inject against the image with the same config baked in, if both ran."""
    inject, baked = sc.get(f"inject{rel}"), sc.get(f"baked-static{rel}")
    if inject is None or baked is None or not baked.median_s or not inject.median_s:
        return []
    return [f"cost of injection (inject{rel} - baked-static{rel} medians): "
            f"{inject.median_s - baked.median_s:+.2f} s"]


def _agent_lines(sc: Mapping[str, ScenarioResult], rel: str = "") -> list[str]:
    """The agent's own time against its unit's time as systemd saw it."""
    lines = []
    for name in (f"inject{rel}", f"inject-later{rel}"):
        s = sc.get(name)
        agent = [v for v in s.boots.agent_ms if v is not None] if s else []
        if s is not None and agent:
            lines.append(f"{name}: the agent's own time (its log's result line): median "
                         f"{statistics.median(agent):.1f} ms {agent}; its unit as systemd "
                         f"saw it (incl. Python's start): median "
                         f"{fmt(s.agent_unit_median_ms)} ms {s.boots.agent_unit_ms}")
    return lines


def _stack_line(stack: str, sc: Mapping[str, ScenarioResult], rel: str = "") -> str | None:
    """One network stack (of one release): inject against its baked floor and its DHCP
    stall, and where the agent finished against the stack's own network unit. For
    ifupdown only when the floor or the stall ran too (else the rows say it all)."""
    inj, floor, stall = (sc.get(n + rel) for n in STACK_SCENARIOS[stack])
    if inj is None or (stack == "ifupdown" and floor is None and stall is None):
        return None
    parts = [f"{stack}{rel}: inject {fmt(inj.median_s)} s"]
    if floor and floor.median_s and inj.median_s:
        gap = inj.median_s - floor.median_s
        parts.append(f"floor (baked) {fmt(floor.median_s)} s, {gap:+.2f} s "
                     f"({gap / floor.median_s * 100:+.1f}%)")
    if stall:
        reached = fmt(stall.median_s) + " s" if stall.median_s else "never"
        parts.append(f"DHCP stall: network {reached}, boot finished "
                     f"{fmt(stall.boot_median_s)} s")
    agent = [v for v in inj.boots.agent_ms if v is not None]
    slack = [v for v in inj.boots.agent_slack_ms if v is not None]
    if agent:
        parts.append(f"agent {statistics.median(agent):.1f} ms (unit "
                     f"{fmt(inj.agent_unit_median_ms)} ms), done {slack} ms before "
                     f"{inj.network_unit} started; it started at "
                     f"{fmt(inj.network_unit_start_median_s)} s and was up at "
                     f"{fmt(inj.network_unit_ready_median_s)} s (baked: {_pair(floor)})")
    return "; ".join(parts)


def _pair(s: ScenarioResult | None) -> str:
    """'X s and Y s': when a scenario's network unit started and was up (medians)."""
    if s is None:
        return "-"
    return (f"{fmt(s.network_unit_start_median_s)} s and "
            f"{fmt(s.network_unit_ready_median_s)} s")


def _later_lines(sc: Mapping[str, ScenarioResult], rel: str = "") -> list[str]:
    """First boot against a later boot of the same instance, per agent measured both."""
    lines = []
    for base in ("inject", "glean", "cloud-init"):
        first, later = sc.get(base + rel), sc.get(f"{base}-later{rel}")
        if first is not None and later is not None and first.median_s is not None \
                and later.median_s is not None:
            lines.append(f"{base}{rel}: first boot {first.median_s:.1f} s, later boot "
                         f"{later.median_s:.1f} s ({later.median_s - first.median_s:+.1f} s)")
    return lines


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (no display on a build host)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(results: BootResults, out: Path) -> None:
    """Two bars per scenario: time to network (never = hatched at the boot time) and
    time until boot finished; dots are the individual runs."""
    plt = _pyplot()
    names = list(results.scenarios)[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.8 * len(names) + 1.8))
    top = 1.0
    for i, n in enumerate(names):
        top = max(top, _plot_scenario(ax, i, results.scenarios[n]))
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("seconds from QEMU start (median of runs; dots = individual runs)")
    ax.set_title(f"netinject: time to network per scenario "
                 f"({results.accel}, {results.runs} run(s) each)")
    ax.set_xlim(0, top * 1.18)
    handles, _labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, out, dpi=110)
    plt.close(fig)


def _plot_scenario(ax: Axes, i: int, s: ScenarioResult) -> float:
    """A scenario's two bars on row ``i`` (labelled in the legend once, on row 0); the
    largest time drawn, for the axis."""
    top = 0.0
    med, bmed = s.median_s, s.boot_median_s
    if med is not None:
        ax.barh(i + 0.2, med, height=0.38, color="#2a9d8f",
                label="time to network" if i == 0 else None)
        pts = s.reached
        ax.scatter(pts, [i + 0.2] * len(pts), color="black", s=10, zorder=3)
        ax.text(max(med, *pts) + 0.8, i + 0.2, f"{med:.1f} s", va="center", fontsize=8)
        top = max(pts)
    else:
        ax.text(0.5, i + 0.2, "network never came up", va="center", fontsize=8,
                color="#c0392b")
    if bmed is not None:
        ax.barh(i - 0.2, bmed, height=0.38, color="#b8c4cc",
                label="boot finished" if i == 0 else None)
        ax.text(bmed + 0.5, i - 0.2, f"{bmed:.1f} s", va="center", fontsize=8)
        top = max(top, bmed)
    return top


def _save_figure(fig: Any, out: Path, dpi: int) -> None:
    """The chart rendered in memory (the format from the file name, as savefig does),
    then written like every output (hostio: whole or not at all, never through a
    device, FIFO or link)."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=out.suffix[1:].lower() or None)
    write_atomic(out, buf.getvalue())


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


def timeline_units(times: Mapping[str, Sequence[float]], extra: int = 4) -> list[str]:
    """The units a scenario's timeline shows, in start order: PATH_UNITS that ran, and
    the ``extra`` longest others (what else the boot spent its time on)."""
    shown = [u for u in PATH_UNITS if u in times]
    others = sorted((u for u in times if u not in shown and not u.endswith(".target")),
                    key=lambda u: times[u][1] - times[u][0], reverse=True)[:extra]
    return sorted(shown + others, key=lambda u: (times[u][0], u))


@dataclass(frozen=True)
class DrawnBar:
    """A bar as a timeline panel shows it: the unit its row is labelled with and the
    bar's extent (s since the kernel started; a bar is at least 0.05 s wide)."""

    unit: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TimelinePanel:
    """What one scenario's panel shows, read back from the chart: its title and its
    bars top to bottom."""

    title: str
    bars: tuple[DrawnBar, ...]


def plot_timeline(results: BootResults, out: Path) -> list[TimelinePanel]:
    """One panel per scenario, one above another on a shared time axis (seconds since
    the kernel started, systemd's monotonic clock): a bar per unit from its start to the
    moment it was up (a oneshot: done). Returns what the panels show, read back from
    the drawn chart, so a caller (the tests) can check the picture, not only the file."""
    timelines = results.timelines
    names = [n for n in results.scenarios if n in timelines]
    if not names:
        raise ValueError("no unit timestamps in the data (run with --timeline)")
    rows = {n: timeline_units(timelines[n]) for n in names}
    plt = _pyplot()
    fig, axes = plt.subplots(len(names), 1, sharex=True, squeeze=False,
                             figsize=(11, sum(0.28 * len(r) + 0.8 for r in rows.values())),
                             gridspec_kw={"height_ratios": [len(rows[n]) + 2 for n in names]},
                             layout="constrained")
    panels = [ax for ax, in axes]
    for ax, name in zip(panels, names, strict=True):
        _draw_panel(ax, name, rows[name], timelines[name], results.scenarios[name].median_s)
    panels[-1].set_xlabel("seconds since the kernel started (systemd's unit timestamps; "
                          "first run of each scenario)")
    fig.suptitle(f"netinject: where boot time goes ({results.accel})")
    _save_figure(fig, out, dpi=100)
    drawn = [_drawn(ax) for ax in panels]
    plt.close(fig)
    return drawn


def _draw_panel(ax: Axes, name: str, units: Sequence[str],
                times: Mapping[str, Sequence[float]], ttn: float | None) -> None:
    """A scenario's units as bars, one row each in ``units`` order, top down."""
    for y, unit in enumerate(units):
        start, end = (v / 1000 for v in times[unit])
        ax.barh(y, max(end - start, 0.05), left=start, color=HIGHLIGHT.get(unit, "#9aa5b1"),
                height=0.7)
        ax.text(end + 0.3, y, f"{end - start:.2f} s", va="center", fontsize=7)
    ax.set_yticks(range(len(units)), units, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(f"{name}: " + (f"network after {ttn:.1f} s from QEMU start"
                                if ttn is not None else "network never came up"),
                 fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)


def _drawn(ax: Axes) -> TimelinePanel:
    """A panel as drawn: each bar's row label and extent from the axes' own artists
    (not from the data it was drawn from), top to bottom."""
    from matplotlib.patches import Rectangle

    labels = {round(float(y)): t.get_text()
              for y, t in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True)}
    bars = sorted((p for p in ax.patches if isinstance(p, Rectangle)), key=Rectangle.get_y)
    return TimelinePanel(ax.get_title(loc="left"), tuple(
        DrawnBar(labels[round(p.get_y() + p.get_height() / 2)], float(p.get_x()),
                 float(p.get_x() + p.get_width()))
        for p in bars))
