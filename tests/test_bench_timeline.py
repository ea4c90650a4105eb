"""The boot timeline: systemd's unit timestamps from a guest's report, the units chosen
for a scenario's panel, and the chart (matplotlib, written and read back as a PNG).
The real boots with --timeline run from the benchmark; here the report text is the
format systemctl show prints (captured from a real guest's console)."""

from __future__ import annotations

from pathlib import Path

from netinject.bench.boot import plot_timeline, timeline_units
from netinject.vm.harness import BootResult

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


def test_timeline_chart_is_written(tmp_path: Path) -> None:
    data = {"accel": "tcg", "scenarios": {"inject": {"median_s": 21.0},
                                          "dhcp-timeout": {"median_s": None}},
            "timelines": {"inject": {u: list(t) for u, t in _result().unit_times().items()},
                          "dhcp-timeout": {"networking.service": [14000.0, 75000.0]}}}
    out = tmp_path / "t.png"
    plot_timeline(data, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def _scenario(ttn: list[float | None], **extra: object) -> dict[str, object]:
    ok = [v for v in ttn if v is not None]
    return {"time_to_network_s": ttn, "median_s": sorted(ok)[len(ok) // 2] if ok else None,
            "min_s": min(ok) if ok else None, "max_s": max(ok) if ok else None,
            "failures": ttn.count(None), "boot_median_s": 25.0, "agent_unit": None,
            "agent_unit_median_ms": None, "agent_ms": [None] * len(ttn),
            "agent_unit_ms": [None] * len(ttn), "network_unit": "systemd-networkd.service",
            "network_unit_start_median_s": 14.0, "network_unit_ready_median_s": 18.9,
            "agent_slack_ms": [None] * len(ttn), **extra}


def test_table_puts_each_stack_against_its_floor_and_its_stall() -> None:
    from netinject.bench.boot import format_table

    data = {"accel": "tcg", "runs": 3, "scenarios": {
        "inject-networkd": _scenario(
            [21.0, 22.0, 23.0], agent_unit="netinject.service", agent_unit_median_ms=870.0,
            agent_ms=[100.0, 110.0, 120.0], agent_slack_ms=[2000.0, 2500.0, 3000.0],
            network_unit_start_median_s=17.0, network_unit_ready_median_s=18.7),
        "baked-networkd": _scenario([20.0, 21.0, 22.0]),
        "dhcp-timeout-networkd": _scenario([None, None, None]),
    }}
    text = format_table(data)
    line = next(x for x in text.splitlines() if x.startswith("networkd:"))
    assert "inject 22.0 s; floor (baked) 21.0 s, +1.00 s (+4.8%)" in line
    assert "DHCP stall: network never, boot finished 25.0 s" in line
    assert "agent 110.0 ms (unit 870.0 ms)" in line
    assert "started at 17.0 s and was up at 18.7 s (baked: 14.0 s and 18.9 s)" in line
