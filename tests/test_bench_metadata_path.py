"""bench vendordata --metadata-path, run small against the real peer (a few ports, a few
calls): the figures' shape, every measured call on the revision-check path (the
service's own log), nova's real drive burst, and the fleet deleted at the end."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from netinject.bench import metadata_path
from netinject.cli import main
from netinject.openstack.peer import Peer
from netinject.openstack.service import DEFAULT_FRESH

pytestmark = [pytest.mark.openstack, pytest.mark.root]


def test_the_metadata_path_bench_runs_small(
        openstack_peer: Peer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A fleet of its own (names and instance ids derive from NAME): never the kept one.
    monkeypatch.setattr(metadata_path, "NAME", f"netinject-bench-md-{uuid.uuid4().hex[:6]}")
    out = tmp_path / "md.json"
    assert main(["bench", "vendordata", "--metadata-path", "--ports", "6",
                 "--ports-per-instance", "2", "--calls", "6", "--clients", "1,3",
                 "--drives", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["fleet"] == {**data["fleet"], "ports": 6, "instances": 3,
                             "ports_per_instance": 2, "kept": False}
    assert (data["fresh_s"], data["period_s"]) == (DEFAULT_FRESH, 1800)
    # nova's own build called once per metadata version, well inside fresh.
    assert data["burst"]["calls_per_drive"] == 5
    assert data["burst"]["span_ms"]["max"] < DEFAULT_FRESH * 1000
    # Every measured call past fresh (3 instances: the clients waited for it) and a
    # revision check that found nothing changed.
    single = data["single"]
    assert (single["n"], single["revision_checks"], single["builds"]) == (6, 6, 0)
    assert 0 < single["p50"] <= single["p99"]
    assert [k["clients"] for k in data["concurrent"]] == [1, 3]
    for k in data["concurrent"]:
        assert (k["revision_checks"], k["builds"]) == (6, 0), k
        assert k["waits"] > 0  # 3 instances, 6 calls: the second round waited
    assert data["guests_per_worker"] == pytest.approx(data["calls_per_s"] * 1800)
    table = capsys.readouterr().out
    assert "guests one worker serves (1 read / 1800 s)" in table
    assert "calls waited for fresh" in table
    # The fleet is gone from Neutron.
    from helpers.openstack import connect

    admin = connect("netinject-admin")
    ids = {str(uuid.uuid5(metadata_path.NAMESPACE, f"{metadata_path.NAME}-{i}"))
           for i in range(3)}
    assert not [p for p in admin.network.ports() if p.device_id in ids]
    assert admin.network.find_network(f"{metadata_path.NAME}-0") is None
