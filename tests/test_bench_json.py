"""What the benchmarks write with --json: the shape of the files committed in docs/ (the
figures rebuilt from a file's per-boot lists give that file back, summaries included)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from netinject.bench.agent import AgentCosts
from netinject.bench.boot import BootResults, BootSeries, ScenarioResult

DOCS = Path(__file__).resolve().parent.parent / "docs"
SERIES = [f.name for f in dataclasses.fields(BootSeries)]


def _docs(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DOCS / name).read_text())
    return data


def _rebuilt(data: dict[str, Any]) -> BootResults:
    """A BootResults holding a --json file's per-boot lists and facts, nothing else."""
    scenarios = {n: ScenarioResult(s["about"], s["agent_unit"], s["network_unit"],
                                   BootSeries(**{k: s[k] for k in SERIES}))
                 for n, s in data["scenarios"].items()}
    return BootResults(data["accel"], data["runs"], scenarios,
                       {n: {u: (t[0], t[1]) for u, t in units.items()}
                        for n, units in data["timelines"].items()},
                       data["bootcharts"], data["host"], data["kernel"], data["date"])


@pytest.mark.parametrize("name", ["boot-nova.json", "boot-stacks.json"])
def test_boot_json_is_the_committed_shape_and_figures(name: str) -> None:
    data = _docs(name)
    out = _rebuilt(data).to_json()
    assert out == data
    assert list(out) == list(data)  # the same key order: diffs against docs/ stay small
    for n, s in out["scenarios"].items():
        assert list(s) == list(data["scenarios"][n])


def test_agent_json_is_the_committed_shape_and_figures() -> None:
    data = _docs("agent.json")
    fields = {f.name for f in dataclasses.fields(AgentCosts)}
    out = AgentCosts(**{k: v for k, v in data.items() if k in fields}).to_json()
    assert out == data
    assert list(out) == list(data)
