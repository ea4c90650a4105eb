"""The host-guest contract and the shipped agent's shape.

* the joined agent's boot path imports only an allowlist of modules (measured in the
  guest image's own Python, as the guest runs it);
* the launcher's constants agree with the contract (it must not import the agent);
* manifests written by the host parse back with the agent's parser;
* the join refuses a top-level name defined in two modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CASES
from helpers.guest import AGENT, GUEST_PYTHON, instance_doc, make_drive, make_guest
from netinject import drive, guest_bundle
from netinject.guest import contract, launcher
from netinject.render import Options
from netinject.sources.neutron import parse_document

# What a first boot may load: the interpreter's start-up set (python3 -I -S), the
# built-in modules the agent uses, and the agent itself. Anything else is a module read
# from disk on the boot's critical path (tens of ms each under emulation).
BOOT_MODULES = {
    # python3 -I -S before any import (and by release: bullseye's 3.9 encodings.latin_1,
    # trixie's 3.13 linecache)
    "__main__", "_abc", "_codecs", "_frozen_importlib", "_frozen_importlib_external",
    "_imp", "_io", "_signal", "_thread", "_warnings", "_weakref", "abc", "builtins",
    "codecs", "encodings", "encodings.aliases", "encodings.utf_8", "io", "marshal",
    "posix", "sys", "time", "zipimport", "encodings.latin_1", "linecache",
    # built in (compiled into Debian's python3: nothing to read)
    "_stat", "_struct", "_sha256", "_sha2", "_socket", "fcntl",
    # small pure-Python modules whose import costs ~0.1-0.2 ms natively (7 ms under TCG):
    # plain code over private built-ins (measured: netinject bench agent --imports)
    "struct", "encodings.utf_16_le",
    # os (~1.3 ms natively, ~22 ms under TCG): what it loads with it (3.13: errno, built in)
    "os", "os.path", "posixpath", "genericpath", "stat", "_collections_abc", "errno",
    # the agent
    "netinject_guest",
}


def test_first_boot_imports_only_the_allowlist(tmp_path: Path) -> None:
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    code = (f"import sys; sys.path.insert(0, {str(AGENT.parent)!r}); "
            "import netinject_guest as a; "
            f"a.run(a.RunArgs({str(root)!r}, wait=0, quiet=True)); "
            "print(' '.join(sorted(sys.modules)))")
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=True, timeout=60)
    loaded = set(done.stdout.split())
    assert "done: 3 file(s) installed" in (root / "var/log/netinject.log").read_text()
    assert loaded - BOOT_MODULES == set()
    assert not {"json", "re", "hashlib", "argparse", "socket", "subprocess"} & loaded


def test_launcher_constants_agree_with_the_contract() -> None:
    assert launcher.STATE_FILE == "/" + contract.STATE_FILE
    assert launcher.LOG_FILE == "/" + contract.LOG_FILE
    assert launcher.RESULT_PREFIX == contract.RESULT_PREFIX
    line = "x\n" + "netinject-result outcome=unchanged elapsed_ms=1.0 instance=y -- z"
    assert contract.parse_result(line) == {"outcome": "unchanged", "elapsed_ms": "1.0",
                                           "instance": "y", "message": "z"}


@pytest.mark.parametrize(("kind", "volume"), [("vfat", "3c598fc9"), ("vfat", "00000000"),
                                              ("iso9660", "3c598fc9"), ("iso9660", "")])
def test_the_launcher_acts_on_the_agents_record_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, volume: str) -> None:
    """The agent decides what tells a later boot (run.fast_path: udev's by-uuid link of
    a vfat drive, blkid's UUID of its serial; nothing for iso9660) and records it; the
    launcher ends the boot exactly when that path exists, and decides nothing else."""
    from netinject.guest import discovery, run

    root = tmp_path / "root"
    (root / "var/lib/netinject").mkdir(parents=True)
    (root / "var/log").mkdir(parents=True)
    found = discovery.Drive(str(root / "dev/vdb"), kind, volume)
    run.record_state(str(root), "1e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0", found)
    fields = (root / contract.STATE_FILE).read_text().split()
    link = ("/dev/disk/by-uuid/" + volume[:4].upper() + "-" + volume[4:].upper()
            if kind == "vfat" else "-")
    assert fields == ["1e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0", f"{kind}:{volume}",
                      "/dev/vdb", link]
    monkeypatch.setattr("sys.stderr", open(tmp_path / "stderr", "w"))  # noqa: SIM115
    assert launcher.later_boot(str(root)) is False  # no link (yet)
    (root / "dev/disk/by-uuid").mkdir(parents=True)
    (root / "dev/disk/by-uuid/3C59-8FC9").symlink_to("../../vdb")
    (root / "dev/disk/by-uuid/0000-0000").symlink_to("../../vdb")
    assert launcher.later_boot(str(root)) is (kind == "vfat")
    if kind == "vfat":
        said = contract.parse_result((root / contract.LOG_FILE).read_text())
        assert said is not None
        assert said["outcome"] == contract.Outcome.UNCHANGED


def test_every_case_manifest_parses_back_with_the_agents_parser() -> None:
    for path in sorted(CASES.glob("*/instance.json")):
        instance = parse_document(json.loads(path.read_text())).instance
        data = drive.contents(instance, Options())
        records = contract.parse_manifest(data.files[drive.MANIFEST_PATH])
        assert records.uuid == str(instance.uuid)
        assert [(n, m) for n, m in records.nics] == [(n.name, str(n.mac))
                                                   for n in instance.nics]
        verified = contract.verify({p.name: b for p, b in data.files.items()
                                    if p.parts[0] == "netinject"})
        assert {e.path for e in verified.entries} == {f.path for f in records.files}


def test_host_cannot_write_a_manifest_the_agent_would_refuse() -> None:
    ok = ("etc/hostname", "hostname", 0o644, "0" * 64)
    contract.format_manifest("1e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0", "default",
                             "netinject 0.1.0", [ok], [])
    for bad in (("etc/shadow", "x", 0o644, "0" * 64), ("etc/hostname", "x y", 0o644, "0" * 64),
                ("etc/hostname", "x", 0o755, "0" * 64), ("etc/hostname", "x", 0o644, "zz")):
        with pytest.raises(ValueError, match=r"allowlist|plain file name|mode or sha256"):
            contract.format_manifest("1e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0", "default",
                                     "netinject 0.1.0", [bad], [])


def test_result_line_round_trip() -> None:
    line = contract.format_result("installed", 75.1, 61.4, "all  in\nplace",
                                  {"files": 4, "instance": "x", "kept": ""})
    assert line.endswith(" -- all in place")  # one line, whatever the message
    assert contract.parse_result("noise\n" + line + "\n") == {
        "outcome": "installed", "elapsed_ms": "75.1", "cpu_ms": "61.4", "files": "4",
        "instance": "x", "message": "all in place"}
    assert contract.parse_result("netinject-result outcome=bogus") is None
    with pytest.raises(ValueError, match="unknown outcome"):
        contract.format_result("bogus")


@pytest.mark.parametrize("outcome", contract.OUTCOMES)
def test_every_outcome_travels_in_the_result_line(outcome: str) -> None:
    """The typed outcome, not words: what apply and apply-status print, and what the host
    (contract.parse_result) and exit_status read."""
    line = contract.format_result(outcome, message="x -- y", fields={"txid": "t1"})
    said = contract.parse_result(line)
    assert said == {"outcome": outcome, "txid": "t1", "message": "x -- y"}
    assert contract.exit_status(outcome) == {"applied": 0, "broken": 3}.get(outcome, 1)


@pytest.mark.parametrize("added", [
    "def read_small(a: str) -> str:\n    return a\n",  # defined in paths too
    "def join(a: str) -> str:\n    return a\n",  # paths binds os.path's join
    "from posixpath import join\n",  # (the same name, another object)
])
def test_join_refuses_a_name_bound_twice(monkeypatch: pytest.MonkeyPatch, added: str) -> None:
    real = guest_bundle.module_source

    def sources(name: str) -> str:
        text = real(name)
        return text + "\n\n" + added if name == "run" else text

    monkeypatch.setattr(guest_bundle, "module_source", sources)
    name = added.split("(")[0].split()[-1]
    with pytest.raises(guest_bundle.JoinError, match=f"'{name}' is defined in both paths "
                                                     "and run"):
        guest_bundle.joined_source()


def test_joined_agent_is_what_the_bundle_and_the_image_carry(tmp_path: Path) -> None:
    import zipfile

    out = guest_bundle.build(tmp_path / "g.pyz")
    with zipfile.ZipFile(out) as zf:
        assert zf.read("netinject_guest.py") == AGENT.read_bytes()
        assert sorted(zf.namelist()) == ["__main__.py", "launcher.py", "netinject_guest.py",
                                         "netinject_guest_image.py"]


def test_a_nic_with_two_slaac_prefixes_is_a_manifest_the_agent_takes() -> None:
    """Found by the fuzz sample: two IPv6 SLAAC subnets on one port give the NIC two
    'addr ethN slaac' records, which the agent's parser refused (so the host refused to
    build the drive)."""
    facts = contract.NicFacts("eth0", "fa:16:3e:00:00:01")
    facts.addrs = ["192.0.2.10/24", "slaac", "slaac"]
    text = contract.format_manifest("1e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0", "default",
                                    "netinject 0.1.0", [("etc/hostname", "hostname", 0o644,
                                                         "0" * 64)],
                                    [("eth0", "fa:16:3e:00:00:01")], facts=[facts])
    parsed = contract.parse_manifest(text.encode())
    assert parsed.facts is not None
    assert parsed.facts["eth0"].addrs == ["192.0.2.10/24", "slaac", "slaac"]


def test_the_launcher_asks_for_real_time_priority_only_with_the_agent_compiled(
        tmp_path: Path) -> None:
    """Importing an agent not compiled for this Python compiles it: a second of CPU under
    emulation, which at real-time priority runs past the unit's RLIMIT_RTTIME bound (the
    kernel killed the agent with SIGXCPU on Debian 13, whose python3.13 an installer of
    another version cannot compile for). The launcher asks for the priority only when the
    module's bytecode for this interpreter is there."""
    assert not launcher.compiled(str(tmp_path))
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    (cache / "netinject_guest.cpython-20.pyc").write_bytes(b"")  # another Python's
    assert not launcher.compiled(str(tmp_path))
    (cache / f"netinject_guest.{sys.implementation.cache_tag}.pyc").write_bytes(b"")
    assert launcher.compiled(str(tmp_path))
