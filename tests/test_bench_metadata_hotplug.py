"""bench metadata-hotplug's presenting side, from fixed figures (no guest, no peer): the
table's medians, spreads, counts, ratios and issue 23's goal, with missing figures and
errors; the --json shape; the CLI's options, usage errors and --help."""

from __future__ import annotations

import json
from typing import Any

import pytest

from netinject.bench import metadata_hotplug as mdhp
from netinject.bench.metadata_hotplug import Cycles, Results, StackRuns, format_table
from netinject.cli import main
from netinject.openstack.metadata_bed import timespan


def _stack(attach: list[list[float | None]], detach: list[list[float | None]],
           drift: list[float | None], dhcp: list[float | None]) -> StackRuns:
    s = StackRuns()
    for r, (a_run, d_run) in enumerate(zip(attach, detach, strict=True)):
        s.new_run()
        for a, d in zip(a_run, d_run, strict=True):
            s.new_cycle()
            s.attach_s[-1][-1], s.detach_s[-1][-1] = a, d
        s.drift_s[-1], s.dhcp_s[-1] = drift[r], dhcp[r]
    return s


def _peer(attach: list[list[float | None]], detach: list[list[float | None]]) -> Cycles:
    p = Cycles()
    for a_run, d_run in zip(attach, detach, strict=True):
        p.new_run()
        for a, d in zip(a_run, d_run, strict=True):
            p.new_cycle()
            p.attach_s[-1][-1] = a
            if d is None:
                p.detach_never[-1][-1] = True
            else:
                p.detach_s[-1][-1] = d
    return p


def _results(**stacks: StackRuns) -> Results:
    return Results("tcg", 2, 2, 60, dict(stacks),
                   _peer([[4.0, 5.0], [6.0, None]], [[30.0, None], [None, None]]),
                   host="h", kernel="k", date="d")


NETWORKD = _stack([[1.0, 2.0], [3.0, 4.0]], [[8.0, 9.0], [10.0, 11.0]], [40.0, 50.0],
                  [5.0, 6.0])
NM = _stack([[6.0, None], [7.0, 8.0]], [[12.0, 13.0], [None, None]], [None, 70.0],
            [None, None])
NM.detach_never[1][1] = True
NM.errors += ["run 1 cycle 2: no ARP answer from 203.0.113.10 within 150 s",
              "run 2 drift: BedError: the Neutron change did not reach the guest"]


def _row(text: str, first: str) -> list[str]:
    """The table's row that starts with ``first``, split at its header's columns (the
    cells hold spaces)."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("stack "))
    dashes = lines[head + 1]
    starts = [i for i, c in enumerate(dashes) if c == "-" and (i == 0 or dashes[i - 1] == " ")]
    line = next(line for line in lines[head + 2:] if line.startswith(first))
    return [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]


def test_the_table_gives_medians_spreads_counts_ratios_and_goal_per_stack() -> None:
    text = format_table(_results(networkd=NETWORKD, nm=NM))
    assert "median (min-max) of 2 boot(s) x 2 cycle(s) each, accel=tcg" in text
    assert "metadata_cache_expiration 15 s (nova's default) for every stack" in text
    assert "drift timer period 60 s" in text
    # cloud-init's attach median: 5.0 (4, 5, 6); every stack against it.
    assert _row(text, "networkd") == [
        "networkd", "2.50 (1.00-4.00)", "4/4", "9.50 (8.00-11.00)", "4/4",
        "45.00 (40.00-50.00)", "5.50 (5.00-6.00)", "0.45x", "0.50x", "met"]
    assert _row(text, "nm") == [
        "nm", "7.00 (6.00-8.00)", "3/4", "12.50 (12.00-13.00), never 1", "2/4", "70.00",
        "-", "-", "1.40x", "NOT met"]
    assert _row(text, "cloud-init") == [
        "cloud-init (ifupdown image)", "5.00 (4.00-6.00)", "3/4", "30.00, never 3", "1/4",
        "-", "-", "-", "(reference)", ""]
    assert "issue 23's goal, ahead of cloud-init's hotplug on every stack: NOT met" in text
    errors = text.split("errors:\n", 1)[1].splitlines()
    assert errors == ["nm: " + e for e in NM.errors]


def test_the_goal_is_met_only_when_every_stack_is_ahead_of_cloud_init() -> None:
    assert _results(networkd=NETWORKD).goal() is True
    assert _results(networkd=NETWORKD, nm=NM).goal() is False
    # A stack without a figure leaves it open, unless another already misses it.
    empty = _stack([[None]], [[None]], [None], [None])
    assert _results(networkd=NETWORKD, netplan=empty).goal() is None
    assert _results(nm=NM, netplan=empty).goal() is False
    text = format_table(_results(networkd=NETWORKD, netplan=empty))
    assert _row(text, "netplan") == ["netplan", "-", "0/1", "-", "0/1", "-", "-", "-", "-",
                                     "-"]
    assert "every stack: -" in text
    # Equal to cloud-init's median is not ahead of it.
    tie = _stack([[5.0]], [[1.0]], [1.0], [1.0])
    assert _results(ifupdown=tie).goal() is False


def test_without_the_peer_there_is_no_ratio_to_it_nor_goal() -> None:
    res = Results("kvm", 2, 2, 90, {"networkd": NETWORKD}, None, host="h", kernel="k",
                  date="d")
    text = format_table(res)
    assert not any(line.startswith("cloud-init") for line in text.splitlines())
    assert _row(text, "networkd")[8:] == ["-", "-"]
    assert "every stack: - (cloud-init left out)" in text
    assert "drift timer period 90 s" in text
    assert res.goal() is None
    assert res.to_json()["cloud_init"] is None


def test_medians_over_every_cycle_of_every_run() -> None:
    assert NETWORKD.attach_median() == 2.5
    assert NM.attach_median() == 7.0
    assert NM.detach_median() == 12.5
    assert NM.nevers() == 1
    assert NETWORKD.over_dhcp() == pytest.approx(2.5 / 5.5)
    assert NM.over_dhcp() is None  # (no DHCP figure: never a zero)
    assert mdhp.flat([[1.0, None], [], [2.0]]) == [1.0, None, 2.0]


def test_the_json_has_every_figure_per_run_and_cycle() -> None:
    data: dict[str, Any] = json.loads(json.dumps(_results(networkd=NETWORKD, nm=NM)
                                                 .to_json()))
    assert {k: data[k] for k in ("accel", "runs", "cycles", "period_s",
                                 "metadata_cache_expiration_s", "host", "kernel", "date")} \
        == {"accel": "tcg", "runs": 2, "cycles": 2, "period_s": 60,
            "metadata_cache_expiration_s": 15, "host": "h", "kernel": "k", "date": "d"}
    assert data["detach_wait_s"] == {"netinject": 120.0, "cloud_init": 90.0}
    assert data["goal"] == {"text": "ahead of cloud-init's hotplug on every stack",
                            "met": False}
    nm = data["stacks"]["nm"]
    assert nm == {
        "attach_s": [[6.0, None], [7.0, 8.0]], "detach_s": [[12.0, 13.0], [None, None]],
        "detach_never": [[False, False], [False, True]], "errors": NM.errors,
        "drift_s": [None, 70.0], "dhcp_s": [None, None],
        "attach_median_s": 7.0, "detach_median_s": 12.5, "detach_never_count": 1,
        "drift_median_s": 70.0, "dhcp_median_s": None, "static_over_dhcp": None,
        "static_over_cloud_init": 1.4, "ahead_of_cloud_init": False}
    assert list(data["stacks"]) == ["networkd", "nm"]
    assert data["stacks"]["networkd"]["ahead_of_cloud_init"] is True
    assert data["cloud_init"] == {
        "variant": "cloud-init-hotplug", "stack": "ifupdown",
        "attach_s": [[4.0, 5.0], [6.0, None]], "detach_s": [[30.0, None], [None, None]],
        "detach_never": [[False, True], [True, True]], "errors": [],
        "attach_median_s": 5.0, "detach_median_s": 30.0, "detach_never_count": 3}


def test_a_new_run_and_cycle_keep_the_lists_aligned() -> None:
    s = StackRuns()
    s.new_run()
    s.new_cycle()
    s.new_cycle()
    s.new_run()
    assert s.attach_s == [[None, None], []]
    assert s.detach_never == [[False, False], []]
    assert s.drift_s == [None, None]
    assert s.dhcp_s == [None, None]


def test_systemd_time_spans_as_systemctl_shows_the_timer() -> None:
    assert timespan(60) == "1min"
    assert timespan(90) == "1min 30s"
    assert timespan(5400) == "1h 30min"
    assert timespan(1800) == "30min"
    assert timespan(604800) == "1w"
    assert timespan(86461) == "1d 1min 1s"


def test_the_estimate_grows_with_boots_cycles_and_period() -> None:
    base = mdhp.estimate_minutes(4, 2, 2, True, 60)
    assert mdhp.estimate_minutes(4, 2, 2, False, 60) < base
    assert mdhp.estimate_minutes(4, 2, 3, True, 60) > base
    assert mdhp.estimate_minutes(4, 2, 2, True, 600) > base
    assert mdhp.estimate_minutes(4, 4, 2, True, 60) == pytest.approx(2 * base, abs=1)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """bench metadata-hotplug's run() replaced: what the CLI asked it for (nothing
    boots), answering with fixed figures."""
    calls: list[dict[str, Any]] = []

    def fake_run(stacks: list[str], runs: int, cycles: int, period: int = 60,
                 with_peer: bool = True, progress: Any = None) -> Results:
        calls.append({"stacks": stacks, "runs": runs, "cycles": cycles, "period": period,
                      "with_peer": with_peer})
        return _results(networkd=NETWORKD)

    monkeypatch.setattr(mdhp, "run", fake_run)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    return calls


def test_the_cli_defaults_and_options(captured: list[dict[str, Any]],
                                      capsys: pytest.CaptureFixture[str],
                                      tmp_path: Any) -> None:
    assert main(["bench", "metadata-hotplug"]) == 0
    assert captured[-1] == {"stacks": ["ifupdown", "networkd", "netplan", "nm"], "runs": 2,
                            "cycles": 2, "period": 60, "with_peer": True}
    assert "issue 23's goal" in capsys.readouterr().out
    out = tmp_path / "mdhp.json"
    assert main(["bench", "metadata-hotplug", "--stacks", "nm, networkd", "--runs", "3",
                 "--cycles", "1", "--period", "120", "--no-peer", "--json", str(out)]) == 0
    assert captured[-1] == {"stacks": ["nm", "networkd"], "runs": 3, "cycles": 1,
                            "period": 120, "with_peer": False}
    assert json.loads(out.read_text())["goal"]["met"] is True


@pytest.mark.parametrize("args", [
    ["--stacks", "networkd,warp"], ["--stacks", ","], ["--stacks", "nm,nm"], ["--runs", "0"],
    ["--cycles", "0"], ["--period", "59"], ["--period", "604801"]])
def test_the_cli_refuses_bad_options_before_booting(
        captured: list[dict[str, Any]], args: list[str]) -> None:
    assert main(["bench", "metadata-hotplug", *args]) == 2
    assert captured == []


def test_the_cli_needs_root(captured: list[dict[str, Any]],
                            monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert main(["bench", "metadata-hotplug"]) == 2
    assert "needs root" in capsys.readouterr().err
    assert captured == []


def test_the_help_says_what_it_measures_needs_and_takes(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["bench", "metadata-hotplug", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("device_add to its first ARP answer", "device_del until eth1's config is "
                  "gone", "metadata_cache_expiration at nova's default 15 s for every stack",
                  "cloud-init's own hotplug", "Needs root", "scripts/openstack-peer.sh start",
                  "--stacks LIST", "--runs N", "--cycles K", "--period S", "--no-peer",
                  "--json FILE", "the agent's floor"):
        assert words in text, words
    minutes = mdhp.estimate_minutes(4, 2, 2, True, 60)
    assert f"about {minutes} min under TCG with the defaults" in text


def test_the_drift_step_waits_out_the_timers_worst_case() -> None:
    # A period, its randomized delay (a sixth), its accuracy (a sixtieth), then the sync.
    for period in (60, 1800, 604800):
        assert mdhp._drift_wait(period) > period + period / 6 + period / 60
    assert mdhp._drift_wait(1800) == 1800 + 300 + 30 + 90
