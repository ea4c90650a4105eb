"""ports_pattern: allocation rules and the 255-character stored form."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from netinject.errors import InvalidInput
from netinject.naming import VALUE_MAX, PortsPattern, updated_system_metadata

A, B, C, D = (str(uuid.UUID(int=i + 1)) for i in range(4))


def test_new_vm_gets_request_order() -> None:
    assert dict(PortsPattern.empty().allocate([B, A, C]).entries) == {B: 0, A: 1, C: 2}


def test_existing_entries_never_change_and_new_port_takes_lowest_free() -> None:
    p = PortsPattern({A: 2, B: 0})
    assert dict(p.allocate([A, B, C]).entries) == {A: 2, B: 0, C: 1}


def test_removed_port_frees_its_index() -> None:
    p = PortsPattern({A: 0, B: 1, C: 2}).allocate([A, C])
    assert dict(p.entries) == {A: 0, C: 2}
    assert dict(p.allocate([A, C, D]).entries) == {A: 0, C: 2, D: 1}


def test_reads_the_seed_form() -> None:
    sysmeta = {"ports_pattern": "{'ca7d6814-a67a-4509-bcbb-e9a9dbfc0c80': '1', "
                                "'fdcf8a8b-3b23-436c-8e24-edacb61bebaa': '0'}"}
    p = PortsPattern.from_system_metadata(sysmeta)
    assert dict(p.entries) == {"ca7d6814-a67a-4509-bcbb-e9a9dbfc0c80": 1,
                               "fdcf8a8b-3b23-436c-8e24-edacb61bebaa": 0}


def test_twenty_ports_fit_in_255_character_values_and_round_trip() -> None:
    ports = [str(uuid.uuid4()) for _ in range(20)]
    p = PortsPattern.empty().allocate(ports)
    stored = p.to_system_metadata()
    assert len(stored) > 1
    assert all(len(v) <= VALUE_MAX for v in stored.values())
    assert set(stored) == {"ports_pattern"} | {f"ports_pattern_{i}" for i in
                                                range(1, len(stored))}
    for value in stored.values():
        assert isinstance(json.loads(value), dict)
    assert dict(PortsPattern.from_system_metadata(stored).entries) == dict(p.entries)
    assert [p.entries[x] for x in ports] == list(range(20))


def test_shrinking_pattern_drops_stale_chunk_keys() -> None:
    ports = [str(uuid.uuid4()) for _ in range(20)]
    big = updated_system_metadata({"other": "x"},
                                  PortsPattern.empty().allocate(ports))
    small = updated_system_metadata(big, PortsPattern.from_system_metadata(big)
                                    .allocate(ports[:2]))
    assert set(small) == {"other", "ports_pattern"}


def test_conflicting_indices_are_rejected() -> None:
    with pytest.raises(InvalidInput) as exc:
        PortsPattern.from_system_metadata({"ports_pattern": json.dumps({A: "0", B: "0"})})
    assert "is already the index of port" in str(exc.value)


def test_literal_eval_never_runs_code(tmp_path: Path) -> None:
    """The seed's Python-literal form is read as a literal, never evaluated as code.

    The value is not JSON, so it reaches the Python-literal reader. Run as code it creates
    a file and yields the valid pattern ``{A: '0'}``, so a reader that evaluated it would
    accept it; as a literal it is a call, and is refused with nothing run.
    """
    def payload(marker: Path) -> str:
        return f"[open({str(marker)!r}, 'w').close(), {{{A!r}: '0'}}][1]"

    # The payload does what it is meant to: evaluated, it runs and yields a valid pattern.
    probe = tmp_path / "probe"
    assert eval(payload(probe)) == {A: "0"}
    assert probe.exists()

    sentinel = tmp_path / "ran"
    with pytest.raises(InvalidInput) as exc:
        PortsPattern.from_system_metadata({"ports_pattern": payload(sentinel)})
    assert "is neither a JSON object nor a Python dict literal" in str(exc.value)
    assert not sentinel.exists()


def test_a_hot_plugged_port_cannot_move_an_untagged_ports_index() -> None:
    """hotplug attach --cloud pins the server's ports first (the indexes the guest has,
    as the tags give them), then gives the new port the lowest free index: a new port
    older than an untagged one (made beforehand) does not take that one's eth0."""
    from netinject.openstack import cloud, live
    from netinject.openstack.document import Request
    from netinject.sources.neutron import parse_document

    iid = "5f0c2a1e-7b3d-4c8e-9a6f-1d2e3c4b5a69"
    net = {"id": "n1", "mtu": 1500}
    sub = {"id": "s1", "network_id": "n1", "ip_version": 4, "cidr": "192.0.2.0/24",
           "gateway_ip": "192.0.2.1"}

    def port(pid: str, mac: str, ip: str, created: str) -> dict[str, object]:
        return {"id": pid, "mac_address": mac, "network_id": "n1", "created_at": created,
                "tags": [], "fixed_ips": [{"subnet_id": "s1", "ip_address": ip}]}

    old_id, new_id = "2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d", "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
    existing = port(old_id, "fa:16:3e:00:00:01", "192.0.2.10", "2024-01-02T00:00:00Z")
    new = port(new_id, "fa:16:3e:00:00:02", "192.0.2.11", "2024-01-01T00:00:00Z")
    srv = live.Server(None, Request(iid, "vm1"), None,
                      cloud.Snapshot((existing,), (sub,), (net,)))

    def names(s: live.Server) -> dict[str, str]:
        inst = parse_document(s.document()).instance
        return {str(n.port_id): n.name for n in inst.nics}

    assert names(srv) == {old_id: "eth0"}
    # Unpinned, the older new port would come first: the existing NIC renamed eth1.
    assert names(srv.with_ports([existing, new])) == {new_id: "eth0", old_id: "eth1"}
    # As attach_port does it: the server's ports pinned, then the new port added.
    before = srv.pinned()
    after = before.with_ports([*before.snapshot.ports, new]).pinned()
    assert names(after) == {old_id: "eth0", new_id: "eth1"}
    assert live.tag_changes([existing, new], after.snapshot.ports) == {
        old_id: [f"netinject:{iid}:0"], new_id: [f"netinject:{iid}:1"]}
