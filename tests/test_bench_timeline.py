"""The boot timeline: systemd's unit timestamps from a guest's report, a boot's figures
taken from them, the units chosen for a scenario's panel, the chart (matplotlib: its bars
read back from the drawn axes, and the PNG written), and the text table. The real boots
with --timeline run from the benchmark; here the report text is the format systemctl
show prints (captured from a real guest's console)."""

from __future__ import annotations

from pathlib import Path

import pytest

from netinject.bench.boot import BootResults, BootSeries, ScenarioResult
from netinject.bench.report import (
    TimelinePanel,
    format_table,
    plot_timeline,
    timeline_units,
)
from netinject.vm.harness import BootResult
from netinject.vm.scenarios import SCENARIOS

REPORT = {
    "unit-times": """Id=netinject.service
InactiveExitTimestampMonotonic=9663420
ActiveEnterTimestampMonotonic=10534718

Id=systemd-udev-settle.service
InactiveExitTimestampMonotonic=0
ActiveEnterTimestampMonotonic=0

Id=ifupdown-pre.service
InactiveExitTimestampMonotonic=10900000
ActiveEnterTimestampMonotonic=14918705

Id=networking.service
InactiveExitTimestampMonotonic=14920000
ActiveEnterTimestampMonotonic=16100000""",
}


def _result() -> BootResult:
    return BootResult(20.0, 20.0, "", report=dict(REPORT))


def test_unit_times_and_the_critical_path_from_systemds_timestamps() -> None:
    res = _result()
    times = res.unit_times()
    assert times["netinject.service"] == (9663.42, 10534.718)
    assert "systemd-udev-settle.service" not in times  # did not run: zero timestamps
    assert res.agent_off_critical_path() is True
    late = BootResult(20.0, 20.0, "", report={"unit-times": REPORT["unit-times"].replace(
        "ActiveEnterTimestampMonotonic=10534718", "ActiveEnterTimestampMonotonic=15000000")})
    assert late.agent_off_critical_path() is False


def test_timeline_units_keep_the_path_and_the_longest_others() -> None:
    times = {"netinject.service": [9663.4, 10534.7], "networking.service": [14920.0, 16100.0],
             "apt-daily.service": [1000.0, 9000.0], "tiny.service": [1.0, 2.0],
             "a.service": [2.0, 2500.0], "b.service": [3.0, 1500.0], "c.service": [4.0, 600.0],
             "d.service": [5.0, 400.0], "basic.target": [0.0, 20000.0]}
    units = timeline_units(times, extra=3)
    # The path units, and the three longest others; not targets, not short units.
    assert set(units) == {"netinject.service", "networking.service", "apt-daily.service",
                          "a.service", "b.service"}
    assert units == sorted(units, key=lambda u: times[u][0])


def _drawn(panel: TimelinePanel) -> list[tuple[str, float, float]]:
    return [(b.unit, round(b.start_s, 6), round(b.end_s, 6)) for b in panel.bars]


def test_timeline_chart_draws_each_scenarios_units_where_they_ran(tmp_path: Path) -> None:
    results = BootResults("tcg", 1, {"inject": _scenario([21.0]),
                                     "dhcp-timeout": _scenario([None])},
                          timelines={"inject": _result().unit_times(),
                                     "dhcp-timeout": {"networking.service": (14000.0, 75000.0),
                                                      "blip.service": (500.0, 510.0)}})
    out = tmp_path / "t.png"
    panels = plot_timeline(results, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
    # Read back from the drawn axes: one panel per scenario, a row per unit in start
    # order, each bar from the unit's start to when it was up (s since the kernel
    # started); a unit that did not run (udev-settle) has no row.
    assert [p.title for p in panels] == ["inject: network after 21.0 s from QEMU start",
                                         "dhcp-timeout: network never came up"]
    assert _drawn(panels[0]) == [("netinject.service", 9.66342, 10.534718),
                                 ("ifupdown-pre.service", 10.9, 14.918705),
                                 ("networking.service", 14.92, 16.1)]
    # A unit shorter than 0.05 s is still drawn, 0.05 s wide.
    assert _drawn(panels[1]) == [("blip.service", 0.5, 0.55),
                                 ("networking.service", 14.0, 75.0)]


def test_timeline_without_unit_timestamps_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run with --timeline"):
        plot_timeline(BootResults("tcg", 1, {"inject": _scenario([21.0])}), tmp_path / "t.png")
    assert not (tmp_path / "t.png").exists()


def test_a_boots_figures_come_from_systemds_timestamps() -> None:
    """netinject.service 9663.42..10534.718 ms, networking.service from 14920 ms."""
    boots = BootSeries()
    boots.add(_result(), SCENARIOS["inject"])
    assert boots.agent_unit_ms == [871.3]
    assert boots.network_unit_start_s == [14.92]
    assert boots.network_unit_ready_s == [16.1]
    assert boots.agent_slack_ms == [4385.3]  # the agent was done that long before
    assert boots.time_to_network_s == [20.0]
    # glean's unit did not run in this report; the slack is only the agent's.
    glean = BootSeries()
    glean.add(_result(), SCENARIOS["glean"])
    assert glean.agent_unit_ms == [None]
    assert glean.agent_slack_ms == [None]
    assert glean.network_unit_start_s == [14.92]


def _scenario(ttn: list[float | None], agent_unit: str | None = None,
              network_unit: str = "systemd-networkd.service", **boots: list[float | None],
              ) -> ScenarioResult:
    """A scenario's result from per-boot figures: boot finished at 25 s and the network
    unit from 14.0 s to 18.9 s in every boot unless given."""
    n = len(ttn)
    series: dict[str, list[float | None]] = {
        "boot_s": [25.0] * n, "network_unit_start_s": [14.0] * n,
        "network_unit_ready_s": [18.9] * n, **boots}
    return ScenarioResult("", agent_unit, network_unit,
                          BootSeries(time_to_network_s=ttn, **series))


def test_table_puts_each_stack_against_its_floor_and_its_stall() -> None:
    results = BootResults("tcg", 3, {
        "inject-networkd": _scenario(
            [21.0, 22.0, 23.0], agent_unit="netinject.service",
            agent_unit_ms=[860.0, 870.0, 880.0], agent_ms=[100.0, 110.0, 120.0],
            agent_slack_ms=[2000.0, 2500.0, 3000.0], network_unit_start_s=[16.0, 17.0, 18.0],
            network_unit_ready_s=[18.6, 18.7, 18.8]),
        "baked-networkd": _scenario([20.0, 21.0, 22.0]),
        "dhcp-timeout-networkd": _scenario([None, None, None]),
    })
    text = format_table(results)
    line = next(x for x in text.splitlines() if x.startswith("networkd:"))
    assert "inject 22.0 s; floor (baked) 21.0 s, +1.00 s (+4.8%)" in line
    assert "DHCP stall: network never, boot finished 25.0 s" in line
    assert "agent 110.0 ms (unit 870.0 ms)" in line
    assert "done [2000.0, 2500.0, 3000.0] ms before systemd-networkd.service started" in line
    assert "started at 17.0 s and was up at 18.7 s (baked: 14.0 s and 18.9 s)" in line
    row = next(x for x in text.splitlines() if x.startswith("dhcp-timeout-networkd"))
    assert row.split()[1:5] == ["never", "-", "-", "-"]
    assert "0/3" in row


def test_each_release_is_put_against_its_own_floor_and_stall() -> None:
    """Scenarios of several Debian releases in one run (NAME@RELEASE): each row's ratio is
    to inject of its own release, and each release gets its own comparison lines."""
    results = BootResults("tcg", 3, {
        "inject": _scenario([20.0, 20.0, 20.0], agent_unit="netinject.service",
                            network_unit="networking.service"),
        "inject@trixie": _scenario([30.0, 30.0, 30.0], agent_unit="netinject.service",
                                   network_unit="networking.service",
                                   agent_ms=[200.0, 210.0, 220.0]),
        "baked-static@trixie": _scenario([27.0, 27.0, 27.0],
                                         network_unit="networking.service"),
        "dhcp-timeout@trixie": _scenario([None, None, None],
                                         network_unit="networking.service",
                                         boot_s=[93.0, 94.0, 95.0]),
    })
    lines = format_table(results).splitlines()
    row = next(x for x in lines if x.startswith("baked-static@trixie"))
    assert row.split()[4] == "0.90x"  # 27 / 30, not 27 / 20 (bookworm's inject)
    assert "cost of injection (inject@trixie - baked-static@trixie medians): +3.00 s" \
        in lines
    line = next(x for x in lines if x.startswith("ifupdown@trixie:"))
    assert "inject 30.0 s; floor (baked) 27.0 s, +3.00 s (+11.1%)" in line
    assert "DHCP stall: network never, boot finished 94.0 s" in line
    assert any(x.startswith("inject@trixie: the agent's own time") and "median 210.0 ms"
               in x for x in lines)
    assert not any(x.startswith("ifupdown:") for x in lines)  # bookworm: inject alone
