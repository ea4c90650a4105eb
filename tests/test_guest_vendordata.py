"""The agent on a stock nova's drive: the payload in openstack/latest/vendor_data2.json
(key ``netinject``), read off iso9660 made by genisoimage with nova's own options and off
vfat made by mkfs.fat + mtools (lower-case 8.3 names, as Linux writes them), and every
way that file can be wrong. The full path with nova's own code is in test_openstack.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers.guest import agent_log, instance_doc, make_guest, run_agent, snapshot
from helpers.iso import NOVA_GENISOIMAGE, genisoimage, nova_tree
from netinject import drive
from netinject.guest import contract
from netinject.openstack.document import payload
from netinject.sources.neutron import parse_document


def nova_iso(tmp: Path, vendor2: Any) -> Path:
    return genisoimage(tmp / "nova.iso", nova_tree(tmp, vendor2), NOVA_GENISOIMAGE)


def nova_vfat(tmp: Path, vendor2: Any) -> Path:
    out = tmp / "nova.vfat"
    tree = nova_tree(tmp, vendor2)
    subprocess.run(["mkfs.vfat", "-C", "-n", "config-2", str(out), "65536"], check=True,
                   capture_output=True)
    subprocess.run(["mcopy", "-s", "-i", str(out), str(tree / "openstack"), "::/"],
                   check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    return out


def _answer(doc: Any) -> dict[str, Any]:
    return {"static": {}, "cloud-init": {"x": 1},
            "netinject": payload(parse_document(doc).instance)}


@pytest.mark.parametrize("fmt", ["iso9660", "vfat"])
def test_the_agent_installs_the_vendordata_payload(fmt: str, tmp_path: Path) -> None:
    doc = instance_doc()
    build = nova_iso if fmt == "iso9660" else nova_vfat
    img = build(tmp_path, _answer(doc))
    root = make_guest(tmp_path / "root", doc, img)
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    result = contract.parse_result(agent_log(root))
    assert result is not None
    assert result["outcome"] == "installed", agent_log(root)
    # The same files as netinject's own drive carries for the instance.
    inst = parse_document(doc).instance
    files = drive.contents(inst).files
    names = {rec.path: rec.source for rec in contract.parse_manifest(
        files[drive.MANIFEST_PATH]).files}
    eni = files[drive.PAYLOAD_DIR / names["etc/network/interfaces"]]
    assert (root / "etc/network/interfaces").read_bytes() == eni


BAD: list[tuple[str, Any, str]] = [
    ("missing key", {"static": {}}, "no-payload"),
    ("empty answer", {"netinject": {}}, "no-payload"),
    ("no file", None, "no-payload"),
    ("not JSON", b"{nope", "stepped-aside"),
    ("not an object", [1], "stepped-aside"),
    ("unknown format", {"netinject": {"format": 99, "manifest": "", "files": {}}},
     "stepped-aside"),
    ("bad file name", {"netinject": {"format": 1, "manifest": "x",
                                     "files": {"../etc/passwd": "x"}}}, "stepped-aside"),
    ("file not text", {"netinject": {"format": 1, "manifest": "x", "files": {"a": 1}}},
     "stepped-aside"),
]


@pytest.mark.parametrize(("case", "vendor2", "outcome"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_or_empty_answer_leaves_dhcp(case: str, vendor2: Any, outcome: str,
                                           tmp_path: Path) -> None:
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, nova_iso(tmp_path, vendor2))
    before = snapshot(root)
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    result = contract.parse_result(agent_log(root))
    assert result is not None
    assert result["outcome"] == outcome, agent_log(root)
    assert snapshot(root) == before


def test_a_tampered_file_in_the_answer_is_refused(tmp_path: Path) -> None:
    doc = instance_doc()
    answer = _answer(doc)
    answer["netinject"]["files"]["interfaces"] += "up /bin/sh -c evil\n"
    root = make_guest(tmp_path / "root", doc, nova_iso(tmp_path, answer))
    before = snapshot(root)
    run_agent(root)
    assert "sha256 mismatch for etc/network/interfaces" in agent_log(root)
    assert snapshot(root) == before


def test_an_answer_for_another_instance_is_refused(tmp_path: Path) -> None:
    """A drive carrying another instance's answer (the SMBIOS uuid differs)."""
    doc = instance_doc()
    other = instance_doc(uuid="0b5e5f1c-51f3-4c41-9f4e-5c1a7d0e9b11")
    root = make_guest(tmp_path / "root", doc, nova_iso(tmp_path, _answer(other)))
    before = snapshot(root)
    run_agent(root)
    assert "system UUID" in agent_log(root)
    assert snapshot(root) == before


def test_vfat_lower_case_short_names_are_read(tmp_path: Path) -> None:
    """mtools and Linux store "latest" as the 8.3 name LATEST with the NT lower-case
    flag; the reader gives it back as "latest"."""
    from netinject.guest.readers import FatReader

    img = nova_vfat(tmp_path, {"netinject": {}})
    fd = os.open(img, os.O_RDONLY)
    try:
        names = set(FatReader(fd).listdir("openstack"))
    finally:
        os.close(fd)
    assert {"latest", "2013-10-17"} <= names


@pytest.mark.parametrize(("stack", "marker"), [
    ("networkd", "etc/systemd/network/10-netinject-eth0.network"),
    ("nm", "etc/NetworkManager/system-connections/netinject-eth0.nmconnection"),
])
def test_the_answer_carries_every_stack_and_the_agent_picks_its_own(
        stack: str, marker: str, tmp_path: Path) -> None:
    """The service answers every stack's files (like netinject's own drive); the image's
    /etc/netinject/stack (written by install) picks which the agent installs."""
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, nova_iso(tmp_path, _answer(doc)))
    (root / "etc/netinject").mkdir(parents=True)
    (root / "etc/netinject/stack").write_text(stack + "\n")
    before = snapshot(root)
    assert run_agent(root).returncode == 0
    assert f"network stack: {stack}" in agent_log(root)
    assert (root / marker).is_file()
    # Not ifupdown's file: that stack is not this image's.
    assert (root / "etc/network/interfaces").read_bytes() == before[
        "etc/network/interfaces"][1]


def test_an_image_without_json_gets_a_reason_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's python3-minimal has no json module (it is in libpython3.X-stdlib): nova's
    vendor_data2.json cannot be read there, and the agent says why (it then steps aside
    at boot, and sync changes nothing), instead of an ImportError."""
    import sys

    from netinject.guest.errors import AgentError

    monkeypatch.setitem(sys.modules, "json", None)  # what `import json` finds there
    with pytest.raises(AgentError, match=r"needs Python's json module, which this image "
                                         r"lacks \(Debian: install python3, not only "
                                         r"python3-minimal\)"):
        contract.vendor_payload(b'{"netinject": {}}')
