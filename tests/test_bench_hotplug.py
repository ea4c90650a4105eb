"""bench hotplug's presenting side, from fixed figures (no guest): the table's medians,
spreads, ratio and goal; the guest's journal read into events; eth0's longest silence;
the --json shape; usage errors."""

from __future__ import annotations

from typing import Any

import pytest

from netinject.bench.hotplug import (
    HotplugResults,
    StackRuns,
    format_table,
    journal_events,
    longest_gap,
)
from netinject.cli import main


def _runs(static: list[float | None], dhcp: list[float | None]) -> StackRuns:
    s = StackRuns()
    for i, (a, b) in enumerate(zip(static, dhcp, strict=True)):
        s.new_run(static_first=i % 2 == 0)
        s.static_attach_s[-1], s.dhcp_attach_s[-1] = a, b
        s.static_request_s[-1] = None if a is None else a + 1.0
        s.static_agent_ms[-1] = 400.0 + i
        s.sync_s[-1], s.sync_agent_ms[-1], s.sync_eth0_gap_s[-1] = 2.0 + i, 900.0, 0.05
        s.exec_ms[-1] = 70.0 + i
        s.static_guest[-1] = {"pci": 0.03, "probe": 0.07, "stack": 0.5, "oper_up": 1.3}
    return s


RESULTS = HotplugResults("tcg", 3, {
    "networkd": _runs([1.31, 1.25, 1.40], [1.30, 1.33, 1.29]),
    "nm": _runs([0.65, 0.70, 0.60], [0.90, 0.80, 1.00]),
    "netplan": _runs([1.4, None, 1.5], [None, None, None]),
}, host="h", kernel="k", date="d")


def _row(text: str, first: str, header: str) -> list[str]:
    """A table's row split at its header's columns (the cells hold spaces)."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith(header))
    dashes = lines[head + 1]
    starts = [i for i, c in enumerate(dashes) if c == "-" and (i == 0 or dashes[i - 1] == " ")]
    line = next(line for line in lines[head + 2:] if line.split()[:1] == [first])
    return [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]


def test_the_table_gives_medians_spreads_ratio_and_goal_per_stack() -> None:
    text = format_table(RESULTS)
    assert "3 run(s) each" in text
    assert "accel=tcg" in text
    header = "stack     static: attach->ARP"
    assert _row(text, "networkd", header) == [
        "networkd", "1.31 (1.25-1.40)", "2.31 (2.25-2.40)", "401 (400-402)",
        "1.30 (1.29-1.33)", "1.01x", "NOT met", "3.00 (2.00-4.00)", "900 (900-900)",
        "0.05 (0.05-0.05)", "71 (70-72)"]
    nm = _row(text, "nm", header)
    assert nm[1] == "0.65 (0.60-0.70)"
    assert nm[4] == "0.90 (0.80-1.00)"
    assert nm[5:7] == ["0.72x", "met"]
    # A run without the figure: counted, never taken as zero; no DHCP figure, no ratio.
    netplan = _row(text, "netplan", header)
    assert netplan[1] == "1.45 (1.40-1.50) 2/3"
    assert netplan[4:7] == ["-", "-", "-"]


def test_where_the_time_goes_rows_and_json() -> None:
    text = format_table(RESULTS)
    assert _row(text, "networkd", "stack     path") == [
        "networkd", "static", "0.03", "0.07", "0.50", "1.30", "1.31"]
    data = RESULTS.to_json()
    assert list(data) == ["stacks", "accel", "runs", "goal_s", "host", "kernel", "date"]
    nm: dict[str, Any] = data["stacks"]["nm"]
    assert nm["static_attach_s"] == [0.65, 0.70, 0.60]
    assert nm["static_first"] == [True, False, True]
    assert (nm["static_attach_median_s"], nm["goal_met"]) == (0.65, True)
    assert data["stacks"]["netplan"]["goal_met"] is None


def _entry(t: float, msg: str, ident: str = "kernel", mono: float | None = None
           ) -> dict[str, Any]:
    e: dict[str, Any] = {"MESSAGE": msg, "__REALTIME_TIMESTAMP": str(int(t * 1e6)),
                         "__MONOTONIC_TIMESTAMP": str(int((t - 1000) * 1e6))}
    if ident == "kernel":
        e["_TRANSPORT"] = "kernel"
        if mono is not None:  # the kernel's own time, earlier than journald's
            e["_SOURCE_MONOTONIC_TIMESTAMP"] = str(int(mono * 1e6))
    else:
        e["SYSLOG_IDENTIFIER"] = ident
        e["_SOURCE_REALTIME_TIMESTAMP"] = str(int(t * 1e6))
    return e


def test_journal_events_from_the_new_device_on_at_the_sources_own_time() -> None:
    entries = [
        _entry(2000.0, "eth1: an old line", "systemd-networkd"),
        _entry(2010.2, "pci 0000:00:06.0: [1af4:1000] type 00 class 0x020000",
               mono=1010.05),
        _entry(2010.4, "virtio-pci 0000:00:06.0: enabling device (0000 -> 0003)"),
        _entry(2010.5, 'guest-exec called: "ip link show eth1"', "qemu-ga"),
        _entry(2010.6, "eth1: Configuring with /etc/systemd/network/x.network.",
               "systemd-networkd"),
        _entry(2011.3, "IPv6: ADDRCONF(NETDEV_CHANGE): eth1: link becomes ready"),
    ]
    assert journal_events(entries, 2010.0, ("systemd-networkd",)) == {
        "pci": 0.05, "probe": 0.4, "stack": 0.6, "oper_up": 1.3}


def test_eth0s_longest_silence() -> None:
    answers = [0.0, 0.05, 0.1, 0.15, 1.0, 1.05]
    assert longest_gap(answers, 0.12, 1.2) == pytest.approx(0.85)
    assert longest_gap(answers, 0.12, 3.0) == pytest.approx(1.95)  # none since 1.05
    assert longest_gap(answers[3:], 0.12, 1.0) is None  # nothing before the change


def test_unknown_stack_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "hotplug", "--stacks", "ifupdown,wicked"]) == 2
    assert "unknown stack(s) wicked; known: ifupdown, networkd, netplan, nm" \
        in capsys.readouterr().err
