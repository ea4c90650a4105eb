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
