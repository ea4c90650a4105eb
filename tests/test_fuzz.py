"""A bounded sample of the fuzz suite (tests/helpers/fuzz.py) on every run: 3,000 inputs over
both input forms, damaged drives, hostile image trees, hostile output paths and hostile
requests to the vendordata service (in process and on loopback, without the OpenStack
peer), with the suite's oracles.
``.venv/bin/python tests/helpers/fuzz.py --inputs 50000`` runs the full suite."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from helpers.fuzz import check_file, run_all

SAMPLE = 3000


def test_fuzz_sample_finds_no_traceback_partial_write_or_injection(
        capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    results = run_all(SAMPLE, seed=20261129, out=out)
    with capsys.disabled():
        print("\n" + out.getvalue(), end="")
    for name, tally in results.items():
        assert tally.inputs > 0, name
        assert tally.findings == [], (name, tally.findings)
        # Both outcomes occur: the sample is neither all refused nor all accepted.
        assert tally.accepted > 0, name
        assert tally.refused > 0, name


@pytest.mark.parametrize(("name", "text"), [
    ("etc/network/interfaces", "auto eth0\n        gateway fe80::1%$(id)\n"),
    ("etc/network/interfaces", "auto eth0\n        address 10.0.0.1; reboot\n"),
    ("etc/udev/rules.d/70-persistent-net.rules",
     'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="fa:16:3e:00:00:01'
     '\n", NAME="eth0"\n'),
    ("etc/resolv.conf", "nameserver 10.0.0.1\noptions ndots:99\n"),
    ("etc/hostname", "web-\u212a\n"),
    ("netinject/manifest", "netinject-manifest 1\nfile ../etc/shadow x 0644 " + "0" * 64 + "\n"),
])
def test_grammar_oracle_rejects_injected_lines(name: str, text: str) -> None:
    """The oracle itself can fail: hostile lines are outside every grammar."""
    assert check_file(name, text) != []


def test_iso_with_a_zero_block_size_is_refused_cleanly(tmp_path: Path) -> None:
    """Found by the 50,000-input run: an ISO volume descriptor with a logical block size
    of 0 made the reader divide by zero (the boot service still stepped aside, through its
    catch-all); the reader now refuses it as not an ISO9660 filesystem."""
    from helpers.fuzz import CASES
    from netinject import drive
    from netinject.guest import contract, discovery
    from netinject.render import Options
    from netinject.sources.neutron import parse_document

    instance = parse_document(json.loads(
        (CASES / "multi-nic-reordered/instance.json").read_text())).instance
    img = tmp_path / "c.iso"
    drive.build_iso(drive.contents(instance, Options()), img, drive.volume_id(instance.uuid))
    data = bytearray(img.read_bytes())
    data[32768 + 128:32768 + 130] = b"\x00\x00"
    img.write_bytes(bytes(data))
    found = discovery.probe_label(str(img))
    assert found is not None
    with pytest.raises(contract.AgentError, match="logical block size 0"):
        discovery.read_payload(found)
    found.close()
