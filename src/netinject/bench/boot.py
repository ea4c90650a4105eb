"""Time-to-network benchmark, the measuring side: boot real guests, scenarios interleaved
(A B C A B C ...) so this machine's drift hits all alike, and keep every boot's figures
per scenario (:class:`BootResults`). The table and the charts are in ``report``."""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..hostio import write_tree
from ..vm.harness import BootResult, HarnessError, boot, kvm_usable
from ..vm.image import BOOTCHART_INIT, VariantImage
from ..vm.progress import Progress
from ..vm.scenarios import Prepared, Scenario, scenario
from .stats import fmt, median, utc_now

Span = tuple[float, float]  # a unit's (started, up) in ms since the kernel started
Timeline = dict[str, Span]  # unit -> its span, every unit of one boot


@dataclass
class BootSeries:
    """One scenario's figures, one entry per measured boot in run order; None where a
    boot did not show the figure (the network never came up, a unit did not run), so
    the lists stay aligned with the runs. Field order is the JSON's."""

    time_to_network_s: list[float | None] = field(default_factory=list)
    boot_s: list[float | None] = field(default_factory=list)
    first_garp_s: list[float | None] = field(default_factory=list)
    agent_ms: list[float | None] = field(default_factory=list)
    agent_unit_ms: list[float | None] = field(default_factory=list)
    userspace_s: list[float | None] = field(default_factory=list)
    network_unit_start_s: list[float | None] = field(default_factory=list)
    network_unit_ready_s: list[float | None] = field(default_factory=list)
    # How long before the stack's network service started the agent was done (it is
    # ordered before it, so >= 0; what matters is how much). Only for netinject's unit.
    agent_slack_ms: list[float | None] = field(default_factory=list)

    def add(self, res: BootResult, scenario: Scenario) -> None:
        """Append one boot's figures, read from the harness's result and the guest's
        report (systemd's unit timestamps, systemd-analyze)."""
        times = res.unit_times()
        agent = times.get(scenario.agent_unit) if scenario.agent_unit else None
        network = times.get(scenario.network_unit)
        self.time_to_network_s.append(res.time_to_network_s)
        self.first_garp_s.append(res.first_garp_s)
        self.boot_s.append(res.boot_s)
        self.agent_ms.append(res.agent_cost_ms())
        self.agent_unit_ms.append(span_ms(agent))
        self.network_unit_start_s.append(round(network[0] / 1000, 2) if network else None)
        self.network_unit_ready_s.append(round(network[1] / 1000, 2) if network else None)
        self.agent_slack_ms.append(round(network[0] - agent[1], 1)
                                   if network and agent
                                   and scenario.agent_unit == "netinject.service" else None)
        self.userspace_s.append(_userspace_s(res.report.get("systemd-analyze", "")))


@dataclass
class ScenarioResult:
    """A scenario's boots and what the table reports of them (medians over the boots
    that showed the figure; min and max of the time to network)."""

    about: str
    agent_unit: str | None
    network_unit: str
    boots: BootSeries = field(default_factory=BootSeries)

    @classmethod
    def of(cls, scenario: Scenario) -> ScenarioResult:
        """An empty result for a scenario, with its description and units."""
        return cls(scenario.about, scenario.agent_unit, scenario.network_unit)

    @property
    def reached(self) -> list[float]:
        """The times to network of the boots whose network came up."""
        return [v for v in self.boots.time_to_network_s if v is not None]

    @property
    def median_s(self) -> float | None:
        return median(self.reached)

    @property
    def min_s(self) -> float | None:
        return min(self.reached) if self.reached else None

    @property
    def max_s(self) -> float | None:
        return max(self.reached) if self.reached else None

    @property
    def failures(self) -> int:
        """Boots whose network never came up."""
        return len(self.boots.time_to_network_s) - len(self.reached)

    @property
    def boot_median_s(self) -> float | None:
        return median(self.boots.boot_s)

    @property
    def agent_unit_median_ms(self) -> float | None:
        return median(self.boots.agent_unit_ms)

    @property
    def network_unit_start_median_s(self) -> float | None:
        return median(self.boots.network_unit_start_s)

    @property
    def network_unit_ready_median_s(self) -> float | None:
        return median(self.boots.network_unit_ready_s)

    def to_json(self) -> dict[str, Any]:
        """The figures as ``--json`` writes them: the per-boot lists, then the summary
        (the keys and their order of the files in docs/)."""
        return {**dataclasses.asdict(self.boots),
                "boot_median_s": self.boot_median_s, "about": self.about,
                "agent_unit": self.agent_unit,
                "agent_unit_median_ms": self.agent_unit_median_ms,
                "network_unit": self.network_unit,
                "network_unit_start_median_s": self.network_unit_start_median_s,
                "network_unit_ready_median_s": self.network_unit_ready_median_s,
                "median_s": self.median_s, "min_s": self.min_s, "max_s": self.max_s,
                "failures": self.failures}


@dataclass
class BootResults:
    """A whole benchmark run: what ``run`` measured and the table, charts and
    ``--json`` present. ``timelines``: per scenario every unit's span from its first
    run (with ``timeline``); ``bootcharts``: per scenario the SVG file written."""

    accel: str
    runs: int
    scenarios: dict[str, ScenarioResult]
    timelines: dict[str, Timeline] = field(default_factory=dict)
    bootcharts: dict[str, str] = field(default_factory=dict)
    host: str = field(default_factory=platform.node)
    kernel: str = field(default_factory=platform.release)
    date: str = field(default_factory=utc_now)

    def to_json(self) -> dict[str, Any]:
        """The run as ``--json`` writes it (the shape of the files in docs/)."""
        return {"scenarios": {n: s.to_json() for n, s in self.scenarios.items()},
                "accel": self.accel, "runs": self.runs,
                "timelines": {n: {u: list(t) for u, t in units.items()}
                              for n, units in self.timelines.items()},
                "bootcharts": self.bootcharts, "host": self.host, "kernel": self.kernel,
                "date": self.date}


@contextlib.contextmanager
def writable_copy(image: VariantImage) -> Iterator[VariantImage]:
    """A private writable copy of a variant image (sparse), for boots that must see what
    an earlier boot of the same instance wrote; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="netinject-instance-") as tmp:
        copy = Path(tmp) / "root.img"
        subprocess.run(["cp", "--sparse=always", str(image.image), str(copy)], check=True)
        yield dataclasses.replace(image, image=copy)


def accelerator(prepared: Prepared) -> str:
    """KVM when this host lets QEMU use it for the prepared images, else TCG."""
    return "kvm" if kvm_usable(next(iter(prepared.images.values()))) else "tcg"


def boot_scenario(prepared: Prepared, name: str, accel: str, extra_append: str = "",
                  progress: Progress | None = None) -> BootResult:
    """One measured boot of a scenario. A later-boot scenario first boots a private
    writable copy of its image once (not measured), then measures the second boot."""
    spec = dataclasses.replace(prepared.spec(name, accel), extra_append=extra_append)
    if not scenario(name).later:
        return boot(spec)
    with writable_copy(spec.image) as image:
        first = dataclasses.replace(spec, image=image, snapshot=False, extra_append="")
        if progress is not None:
            progress(f"  {name}: first boot of the instance (not measured) ...")
        if boot(first).boot_s is None:
            raise HarnessError(f"{name}: the instance's first boot did not finish")
        return boot(dataclasses.replace(spec, image=image, snapshot=False))


def run(names: Sequence[str], runs: int, progress: Progress,
        timeline: bool = False, bootchart: Path | None = None) -> BootResults:
    """Boot every scenario ``runs`` times, interleaved. ``timeline``: the guests also
    report every unit's start and end (systemd's timestamps), kept per scenario from its
    first run for ``report.plot_timeline``. ``bootchart``: afterwards, one more boot per
    scenario under systemd-bootchart (not measured: sampling costs time), its SVG
    written there."""
    for n in names:
        scenario(n)  # (ValueError: an unknown name, release or combination)
    prepared = Prepared(tuple(names), progress)
    charts: dict[str, str] = {}
    try:
        accel = accelerator(prepared)
        progress(f"accelerator: {accel}")
        scenarios = {n: ScenarioResult.of(scenario(n)) for n in names}
        timelines = _measure(prepared, names, runs, accel, scenarios, timeline, progress)
        if bootchart is not None:
            charts = _bootcharts(prepared, names, accel, bootchart, progress)
    finally:
        prepared.close()
    return BootResults(accel, runs, scenarios, timelines, charts)


def _measure(prepared: Prepared, names: Sequence[str], runs: int, accel: str,
             scenarios: dict[str, ScenarioResult], timeline: bool,
             progress: Progress) -> dict[str, Timeline]:
    """The measured boots, run by run (each run boots every scenario once, in the order
    given), each boot's figures added to its scenario; the timelines of first runs."""
    timelines: dict[str, Timeline] = {}
    total = runs * len(names)
    k = 0
    for r in range(runs):
        for name in names:
            k += 1
            progress(f"boot {k}/{total} (run {r + 1}/{runs}): {name} ...")
            res = boot_scenario(prepared, name, accel,
                                "netinject.timeline" if timeline else "", progress)
            if timeline and name not in timelines:
                timelines[name] = res.unit_times("all-unit-times")
            scenarios[name].boots.add(res, scenario(name))
            ttn = res.time_to_network_s
            progress(f"  {name}: network after "
                     + (f"{ttn:.1f} s" if ttn is not None else "never")
                     + f", boot finished after {fmt(res.boot_s)} s")
    return timelines


def _bootcharts(prepared: Prepared, names: Sequence[str], accel: str, out: Path,
                progress: Progress) -> dict[str, str]:
    """One more boot per scenario with systemd-bootchart as init (not measured: its
    sampling costs time); each SVG written to ``out``/<scenario>.svg."""
    charts: dict[str, str] = {}
    for name in names:
        progress(f"bootchart boot: {name} (systemd-bootchart as init; not measured)")
        res = boot_scenario(prepared, name, accel,
                            f"init={BOOTCHART_INIT} netinject.bootchart", progress)
        svg = res.bootchart_svg()
        if svg is None:
            raise HarnessError(f"{name}: the guest reported no bootchart")
        out_file, = write_tree(out, {PurePosixPath(f"{name}.svg"): svg})
        charts[name] = str(out_file)
        progress(f"  wrote {out_file}")
    return charts


def span_ms(span: Span | None) -> float | None:
    """How long a unit took, Starting to up (ms, one decimal); None if it did not run."""
    return round(span[1] - span[0], 1) if span else None


def _duration_ms(text: str) -> float | None:
    """systemd's duration text ("1min 2.5s", "830ms") in ms; None if not one."""
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
    """The userspace part of ``systemd-analyze``'s line (s); None if it has none."""
    m = re.search(r"\+ ([0-9.]+(?:min )?[0-9.]*m?s) \(userspace\)", analyze)
    if not m:
        return None
    ms = _duration_ms(m.group(1))
    return ms / 1000 if ms is not None else None
