"""What the benchmarks write with --json: the shape of the files committed in docs/ (the
figures rebuilt from a file's per-boot lists give that file back, summaries included),
and every benchmark's file replaced whole, never rewritten in place."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from netinject.bench import agent, boot, metadata_path, vendordata
from netinject.bench import drive as bench_drive
from netinject.bench.agent import AgentCosts
from netinject.bench.boot import BootResults, BootSeries, ScenarioResult
from netinject.cli import main

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


RESULTS: dict[str, Any] = {
    "drive": {"vfat": [1.0]}, "vendordata": {"rounds": 1},
    "vendordata --metadata-path": {"calls_per_s": 1.0},
    "boot": BootResults("tcg", 1, {"inject": ScenarioResult(
        "about", "netinject.service", "networking.service", BootSeries([21.0], [25.0]))},
        host="h", kernel="k", date="d"),
    "agent": AgentCosts("tcg", 1)}


@pytest.mark.parametrize(("bench", "module", "function"), [
    ("drive", bench_drive, "run"), ("boot", boot, "run"), ("agent", agent, "agent_costs"),
    ("vendordata", vendordata, "run"),
    ("vendordata --metadata-path", metadata_path, "run")])
def test_every_bench_replaces_its_json_whole(
        bench: str, module: Any, function: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The old file is renamed over, not truncated and rewritten: a hard link to it
    keeps the old figures (a reader never sees half a file)."""
    monkeypatch.setattr(module, function, lambda *a, **kw: RESULTS[bench])
    out, link = tmp_path / "figures.json", tmp_path / "old.json"
    out.write_text("old figures\n")
    os.link(out, link)
    args = (["bench", *bench.split(), "--json", str(out)] if bench.startswith("vendordata")
            else ["bench", bench, "--runs", "1", "--json", str(out)])
    assert main(args) == 0
    result = RESULTS[bench]
    assert json.loads(out.read_text()) == (result if isinstance(result, dict)
                                           else result.to_json())
    assert link.read_text() == "old figures\n"
    capsys.readouterr()
