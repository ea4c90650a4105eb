"""The agent benchmark (``bench agent``): the guest agent's own time on a first and a
second boot of the same instance, systemd's view of its unit, and (optionally) what each
module it imports costs in the guest and on this host."""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
from dataclasses import dataclass, field
from typing import Any

from ..vm.harness import BootResult, BootSpec, boot
from ..vm.progress import Progress
from ..vm.scenarios import Prepared
from .boot import accelerator, span_ms, writable_copy
from .stats import fmt, median

IMPORT_PROBE = ("os", "struct", "hashlib", "json", "re", "socket", "argparse",
                "encodings.utf_16_le")


@dataclass
class AgentCosts:
    """What ``agent_costs`` measured, one entry per run in each list (None where a boot
    did not show the figure). Field order is the JSON's, less the medians."""

    accel: str
    runs: int
    first_boot_ms: list[float | None] = field(default_factory=list)
    second_boot_ms: list[float | None] = field(default_factory=list)
    first_boot_cpu_ms: list[float | None] = field(default_factory=list)
    first_boot_unit_ms: list[float | None] = field(default_factory=list)
    first_boot_slack_before_networking_ms: list[float | None] = field(default_factory=list)
    first_boot_off_critical_path: list[bool | None] = field(default_factory=list)
    import_costs_guest_ms: dict[str, float] = field(default_factory=dict)
    import_costs_native_ms: dict[str, float] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)

    def add_first_boot(self, res: BootResult) -> None:
        """A first boot: the agent's time and CPU, its unit's, and its slack before
        networking could start (ifupdown-pre done)."""
        times = res.unit_times()
        agent, gate = times.get("netinject.service"), times.get("ifupdown-pre.service")
        self.first_boot_ms.append(res.agent_cost_ms())
        self.first_boot_cpu_ms.append(res.agent_cpu_ms())
        self.first_boot_unit_ms.append(span_ms(agent))
        self.first_boot_slack_before_networking_ms.append(
            round(gate[1] - agent[1], 1) if agent and gate else None)
        self.first_boot_off_critical_path.append(res.agent_off_critical_path())

    def to_json(self) -> dict[str, Any]:
        """The figures as ``--json`` writes them (the keys and order of docs/agent.json)."""
        return {"accel": self.accel, "runs": self.runs,
                "first_boot_ms": self.first_boot_ms, "second_boot_ms": self.second_boot_ms,
                "first_boot_median_ms": median(self.first_boot_ms),
                "first_boot_cpu_ms": self.first_boot_cpu_ms,
                "first_boot_cpu_median_ms": median(self.first_boot_cpu_ms),
                "second_boot_median_ms": median(self.second_boot_ms),
                "first_boot_unit_ms": self.first_boot_unit_ms,
                "first_boot_unit_median_ms": median(self.first_boot_unit_ms),
                "first_boot_slack_before_networking_ms":
                    self.first_boot_slack_before_networking_ms,
                "first_boot_off_critical_path": self.first_boot_off_critical_path,
                "import_costs_guest_ms": self.import_costs_guest_ms,
                "import_costs_native_ms": self.import_costs_native_ms,
                "logs": self.logs}


def agent_costs(runs: int, progress: Progress, imports: bool = False) -> AgentCosts:
    """The agent's own time on a first and a second boot of the same instance (its result
    line: from the launcher's first line to its last), on a private writable copy of the
    inject image per run; systemd's view of the agent's unit on the first boots, and
    whether it finished before networking could start anyway (ifupdown-pre done).
    ``imports``: one more boot that times module imports in the guest (TCG), beside the
    same on this host (native)."""
    prepared = Prepared(("inject",), progress)
    try:
        costs = AgentCosts(accelerator(prepared), runs)
        for r in range(runs):
            _first_and_second_boot(prepared, costs, f"agent cost run {r + 1}/{runs}",
                                   progress)
        if imports:
            progress("import probe boot ...")
            costs.import_costs_guest_ms = _guest_import_costs(
                dataclasses.replace(prepared.spec("inject", costs.accel),
                                    extra_append="netinject.probe-imports"))
    finally:
        prepared.close()
    if imports:
        costs.import_costs_native_ms = import_costs_native()
    return costs


def _first_and_second_boot(prepared: Prepared, costs: AgentCosts, label: str,
                           progress: Progress) -> None:
    """Two boots of one fresh instance (a private writable copy of the image): the
    first does the agent's whole work, the second finds it done."""
    with writable_copy(prepared.images["inject"]) as image:
        spec = dataclasses.replace(prepared.spec("inject", costs.accel), image=image,
                                   snapshot=False)
        for n in (1, 2):
            progress(f"{label}: boot {n} ...")
            res = boot(spec)
            if n == 1:
                costs.add_first_boot(res)
            else:
                costs.second_boot_ms.append(res.agent_cost_ms())
            costs.logs.append(res.agent_log)
            progress(f"  boot {n}: agent {fmt(res.agent_cost_ms())} ms "
                     f"({res.agent_log.splitlines()[-1] if res.agent_log else 'no log'})")


def _guest_import_costs(spec: BootSpec) -> dict[str, float]:
    """One boot whose guest times each IMPORT_PROBE module in a fresh interpreter."""
    out: dict[str, float] = {}
    for line in boot(spec).report.get("import-costs", "").splitlines():
        name, _, ms = line.partition(" ")
        if ms:
            out[name] = float(ms)
    return out


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


def format_report(costs: AgentCosts) -> str:
    """The figures as text: the agent's time on first and second boots, its unit as
    systemd saw it and whether it was off networking's path, then the import costs."""
    off = costs.first_boot_off_critical_path
    lines = [
        f"agent's own work ({costs.accel}, {costs.runs} run(s)): first boot median "
        f"{fmt(median(costs.first_boot_ms))} ms {costs.first_boot_ms} (of it CPU: median "
        f"{fmt(median(costs.first_boot_cpu_ms))} ms {costs.first_boot_cpu_ms}); second "
        f"boot median {fmt(median(costs.second_boot_ms))} ms {costs.second_boot_ms}",
        f"agent's unit as systemd saw it (first boots, Starting to Finished): median "
        f"{fmt(median(costs.first_boot_unit_ms))} ms {costs.first_boot_unit_ms}; "
        f"finished before networking could start (ifupdown-pre done) in "
        f"{sum(1 for v in off if v)}/{len(off)} boot(s), slack "
        f"{costs.first_boot_slack_before_networking_ms} ms"]
    if costs.import_costs_guest_ms:
        lines.append(f"import cost, fresh interpreter (ms): module, guest ({costs.accel}), "
                     "this host (native)")
        lines += [f"  {mod:22} {guest:8.2f} {fmt(costs.import_costs_native_ms.get(mod)):>8}"
                  for mod, guest in costs.import_costs_guest_ms.items()]
    return "\n".join(lines)
