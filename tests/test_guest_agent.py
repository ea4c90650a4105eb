"""The guest agent against guest-shaped trees with drives built by netinject."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import tree
from helpers.guest import (
    AGENT,
    BUNDLE,
    GUEST_PYTHON,
    ORIGINAL_ENI,
    agent_log,
    instance_doc,
    make_drive,
    make_guest,
    run_agent,
    snapshot,
)
from netinject.cli import main
from netinject.guest import contract

UUID_A = "1e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0"
UUID_B = "9b8a7c6d-5e4f-4321-8abc-def012345678"


def _set_field(line: str, n: int, value: str) -> str:
    fields = line.split(" ")
    fields[n] = value
    return " ".join(fields)


def _rendered(tmp: Path, doc: Any) -> dict[str, bytes]:
    src = tmp / "doc.json"
    src.write_text(json.dumps(doc))
    out = tmp / "rendered"
    # What an ifupdown image installs: its stack's file and the shared ones.
    assert main(["render", str(src), "--format", "eni,udev,resolv,hostname",
                 "--out", str(out)]) == 0
    return tree(out)


@pytest.mark.parametrize("fmt", ["vfat", "iso9660"])
def test_first_boot_installs_exactly_the_manifest_files(fmt: str, tmp_path: Path) -> None:
    doc = instance_doc()
    img = make_drive(tmp_path / "config.img", doc, fmt)  # type: ignore[arg-type]
    root = make_guest(tmp_path / "root", doc, img)
    before = snapshot(root)
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    rendered = _rendered(tmp_path, doc)
    after = snapshot(root)
    changed = {k for k in after if after.get(k) != before.get(k)}
    files_changed = {k for k in changed if after[k][0] == "file"}
    b = f"var/lib/netinject/backup/{UUID_A}"
    expected_state = {"var/lib/netinject/instance-id", "var/lib/netinject/applied-manifest",
                      "var/lib/netinject/apply.lock",
                      f"{b}/etc%network%interfaces",
                      f"{b}/etc%hostname", f"{b}/etc%udev%rules.d%70-persistent-net.rules.absent"}
    # /etc/resolv.conf is a symlink in this image (resolvconf or systemd-resolved manage
    # it): kept, not replaced.
    assert files_changed == (set(rendered) - {"etc/resolv.conf"}) | expected_state
    assert os.readlink(root / "etc/resolv.conf") == "../run/resolv.conf"
    del rendered["etc/resolv.conf"]
    for rel, content in rendered.items():
        assert (root / rel).read_bytes() == content
        assert not (root / rel).is_symlink()
        assert (root / rel).stat().st_mode & 0o777 == 0o644
    from netinject.drive import volume_id
    from netinject.model import parse_uuid

    serial = f"{volume_id(parse_uuid(UUID_A)):08x}"
    # The fast path the launcher checks on later boots: udev's link of a vfat drive.
    fast = f"/dev/disk/by-uuid/{serial[:4].upper()}-{serial[4:].upper()}"
    assert (root / "var/lib/netinject/instance-id").read_text() == (
        f"{UUID_A}\nvfat:{serial}\n/dev/vdb\n{fast}\n" if fmt == "vfat"
        else f"{UUID_A}\niso9660:{serial}\n/dev/vdb\n-\n")
    # Originals kept: files, and "absent" for the new udev rules.
    bdir = root / f"var/lib/netinject/backup/{UUID_A}"
    assert (bdir / "etc%network%interfaces").read_bytes() == ORIGINAL_ENI
    assert sorted(os.listdir(bdir)) == [
        "etc%hostname", "etc%network%interfaces",
        "etc%udev%rules.d%70-persistent-net.rules.absent"]
    assert (bdir / "etc%hostname").read_bytes() == b"debian\n"
    assert (root / "run/resolv.conf").read_bytes() == b"nameserver 127.0.0.53\n"
    log = agent_log(root)
    # The drive's label (FAT volume label, ISO volume identifier) and volume id.
    assert f"/dev/vdb ({fmt}, label config-2, volume {volume_id(parse_uuid(UUID_A)):08x})\n" \
        in log
    assert "first boot of instance " + UUID_A in log
    assert "kept /etc/resolv.conf: a symlink" in log
    assert "done: 3 file(s) installed, 0 NIC(s) renamed" in log
    assert "ms]" in done.stderr  # timings on the console too


def test_second_boot_changes_nothing(tmp_path: Path) -> None:
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    assert run_agent(root).returncode == 0
    before = snapshot(root)
    (root / "etc/network/interfaces").chmod(0o600)  # a later admin edit must survive
    before = snapshot(root)
    done = run_agent(root)
    assert done.returncode == 0
    assert snapshot(root) == before
    assert "not the first boot of instance " + UUID_A in agent_log(root)


def test_first_boot_finds_the_drive_through_udevs_by_label_link(tmp_path: Path) -> None:
    """With /dev/disk/by-label/config-2 present, the agent probes its target and skips
    the scan of /sys/class/block (here the scan could not find the drive: vdb is not
    listed there)."""
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    # The drive's sysfs entry carries a 'partition' attribute, which the scan skips:
    # only the by-label link can lead to it (its 'ro' attribute is still read).
    (root / "sys/class/block/vdb/partition").write_text("1\n")
    (root / "dev/disk/by-label").mkdir(parents=True)
    os.symlink("../../vdb", root / "dev/disk/by-label/config-2")
    assert run_agent(root).returncode == 0
    log = agent_log(root)
    assert f"config drive {root}/dev/vdb (vfat" in log, log
    assert (root / "var/lib/netinject/instance-id").read_text().split()[0] == UUID_A


def test_by_label_link_leading_out_of_dev_is_not_followed(tmp_path: Path) -> None:
    """A by-label link udev did not make (pointing out of /dev) is ignored: the scan of
    /sys/class/block finds the real drive."""
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    decoy = make_drive(tmp_path / "decoy.img", instance_doc(uuid=UUID_B))
    (root / "dev/disk/by-label").mkdir(parents=True)
    os.symlink(decoy, root / "dev/disk/by-label/config-2")
    assert run_agent(root).returncode == 0
    assert (root / "var/lib/netinject/instance-id").read_text().split()[0] == UUID_A


def test_new_instance_uuid_reapplies(tmp_path: Path) -> None:
    """A disk cloned into a new instance is a first boot."""
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "a.img", doc))
    assert run_agent(root).returncode == 0
    first = (root / "etc/network/interfaces").read_bytes()
    doc_b = instance_doc(uuid=UUID_B)
    doc_b["ports"][1]["fixed_ips"][0]["ip_address"] = "198.51.100.99"
    (root / "dev/vdb").unlink()
    make_drive(root / "dev/vdb", doc_b)
    (root / "sys/class/dmi/id/product_uuid").write_text(UUID_B + "\n")  # the new instance
    assert run_agent(root).returncode == 0
    eni = (root / "etc/network/interfaces").read_bytes()
    assert b"address 198.51.100.99" in eni
    assert (root / "var/lib/netinject/instance-id").read_text().split()[0] == UUID_B
    bdir = root / f"var/lib/netinject/backup/{UUID_B}"
    assert (bdir / "etc%network%interfaces").read_bytes() == first
    assert (root / f"var/lib/netinject/backup/{UUID_A}/etc%network%interfaces"
            ).read_bytes() == ORIGINAL_ENI


# The lock a first boot takes once it has a trusted payload (and keeps as state): not a
# change to the image's config.
LOCK = ("var/lib/netinject", "var/lib/netinject/apply.lock")


def _assert_steps_aside(root: Path, reason: str) -> None:
    before = snapshot(root)
    done = run_agent(root)
    assert done.returncode == 0
    after = snapshot(root)
    assert {k: v for k, v in after.items() if k not in LOCK} == before
    log = agent_log(root)
    assert reason in log, log
    assert "stepping aside" in log or "no config drive" in log


def test_no_drive(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root", instance_doc(), None)
    _assert_steps_aside(root, "no config drive (label config-2) found")


def test_truncated_image(tmp_path: Path) -> None:
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    with (root / "dev/vdb").open("r+b") as fh:
        fh.truncate(40 * 1024)
    _assert_steps_aside(root, "drive truncated")


def test_manifest_hash_mismatch(tmp_path: Path) -> None:
    doc = instance_doc()
    img = make_drive(tmp_path / "c.img", doc)
    root = make_guest(tmp_path / "root", doc, img)
    data = bytearray((root / "dev/vdb").read_bytes())
    at = data.find(b"address 198.51.100.20")
    assert at > 0
    data[at:at + 21] = b"address 198.51.100.66"
    (root / "dev/vdb").write_bytes(bytes(data))
    _assert_steps_aside(root, "sha256 mismatch for etc/network/interfaces")


def _file_field(n: int, value: str, only_first: bool = False) -> Any:
    def mutate(lines: list[str]) -> list[str]:
        out, done = [], False
        for line in lines:
            if line.startswith("file ") and not (only_first and done):
                line, done = _set_field(line, n, value), True
            out.append(line)
        return out
    return mutate


TAMPERED = [
    ("traversal", _file_field(1, "../../etc/shadow", True), "is not an allowed guest path"),
    ("traversal-mid", _file_field(1, "etc/network/../../root/.ssh/authorized_keys", True),
     "is not an allowed guest path"),
    ("absolute", _file_field(1, "/etc/network/interfaces", True),
     "is not an allowed guest path"),
    ("other-dir", _file_field(1, "etc/cron.d/evil", True), "is not an allowed guest path"),
    ("rules-escape", _file_field(1, "etc/udev/rules.d/../../passwd", True),
     "is not an allowed guest path"),
    ("setuid", _file_field(3, "4755"), "mode '4755' is not allowed"),
    ("version", lambda lines: ["netinject-manifest 4", *lines[1:]],
     "unknown manifest format '4'"),
    ("unknown-record", lambda lines: [*lines, "exec /bin/sh"], "unknown record 'exec'"),
]


@pytest.mark.parametrize(("mutate", "reason"), [t[1:] for t in TAMPERED],
                         ids=[t[0] for t in TAMPERED])
def test_tampered_manifest_refused(mutate: Any, reason: str, tmp_path: Path) -> None:
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc,
                                                         mutate_manifest=mutate))
    _assert_steps_aside(root, reason)


def test_symlinked_parent_directory_refused(tmp_path: Path) -> None:
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "etc/udev/rules.d").rmdir()
    os.symlink(elsewhere, root / "etc/udev/rules.d")
    _assert_steps_aside(root, "refusing to write through symlinked directory")
    assert list(elsewhere.iterdir()) == []


def test_rename_failure_rolls_back_files(tmp_path: Path) -> None:
    """sysfs says eth0/eth1 carry each other's MACs, but no such kernel links exist in
    this namespace: the rename fails, and every installed file is restored."""
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    a = (root / "sys/class/net/eth0/address").read_text()
    b = (root / "sys/class/net/eth1/address").read_text()
    (root / "sys/class/net/eth0/address").write_text(b)
    (root / "sys/class/net/eth1/address").write_text(a)
    before = snapshot(root, skip=("var/log/netinject.log", "var/lib/netinject"))
    done = run_agent(root)
    assert done.returncode == 0
    after = snapshot(root, skip=("var/log/netinject.log", "var/lib/netinject"))
    after = {k: v for k, v in after.items() if not k.startswith("var/lib/netinject")}
    before = {k: v for k, v in before.items() if not k.startswith("var/lib/netinject")}
    assert after == before
    assert not (root / "var/lib/netinject/instance-id").exists()
    log = agent_log(root)
    assert "NIC rename failed" in log
    assert "rolling back installed files" in log


def test_failure_while_staging_removes_the_staged_files(tmp_path: Path) -> None:
    """The last file cannot be staged (its temporary name is taken by a directory):
    nothing is renamed into place, the files staged before it are removed, no uuid is
    recorded."""
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    (root / "etc/udev/rules.d/.70-persistent-net.rules.netinject-tmp").mkdir()
    before = snapshot(root, skip=("var/log/netinject.log", "var/lib/netinject"))
    assert run_agent(root).returncode == 0
    after = snapshot(root, skip=("var/log/netinject.log", "var/lib/netinject"))
    assert {k: v for k, v in after.items() if not k.startswith("var/lib/netinject")} == \
        {k: v for k, v in before.items() if not k.startswith("var/lib/netinject")}
    assert not (root / "var/lib/netinject/instance-id").exists()
    assert "install failed" in agent_log(root)


def test_unreadable_target_parent_steps_aside_before_any_change(tmp_path: Path) -> None:
    """etc/udev/rules.d is a file here: the preflight refuses before writing anything."""
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    (root / "etc/udev/rules.d").rmdir()
    (root / "etc/udev/rules.d").write_bytes(b"not a directory\n")
    _assert_steps_aside(root, "cannot look at")


CRASH = """
import os, sys
sys.path.insert(0, {agent_dir!r})
import netinject_guest as agent
class PowerLoss:
    # os as the agent sees it, but the rename that puts {after!r} in place is the
    # last thing that happens: no rollback, no cleanup.
    def __getattr__(self, name):
        return getattr(os, name)
    def rename(self, src, dst):
        os.rename(src, dst)
        if dst.endswith({after!r}):
            os._exit(9)
agent.os = PowerLoss()
agent.run(agent.RunArgs({root!r}, wait=0))
"""


def test_crash_between_installs_completes_on_next_boot(tmp_path: Path) -> None:
    doc = instance_doc()
    img = make_drive(tmp_path / "c.img", doc)
    clean = make_guest(tmp_path / "clean", doc, img)
    assert run_agent(clean).returncode == 0
    root = make_guest(tmp_path / "root", doc, img)
    code = CRASH.format(agent_dir=str(AGENT.parent), after="etc/network/interfaces",
                        root=str(root))
    crashed = subprocess.run([GUEST_PYTHON, "-I", "-S", "-c", code], check=False,
                             capture_output=True, timeout=60)
    assert crashed.returncode == 9
    assert not (root / "var/lib/netinject/instance-id").exists()
    assert (root / "etc/hostname").read_bytes() != b"debian\n"  # the crash was midway
    assert run_agent(root).returncode == 0
    # Same end state as an uninterrupted first boot, true originals in the backup.
    assert snapshot(root) == snapshot(clean)


def test_agent_runs_from_the_bundle(tmp_path: Path) -> None:
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    bundle = tmp_path / "netinject-guest.pyz"
    assert main(["guest-bundle", "--out", str(bundle)]) == 0
    # Executed directly: its shebang line must work as the kernel passes it.
    done = subprocess.run([str(bundle), "run", "--root", str(root), "--wait",
                           "0"], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0
    assert (root / "var/lib/netinject/instance-id").read_text().split()[0] == UUID_A
    # The bundle's __main__ passes its start time: the log counts from there.
    assert f"netinject-guest {contract.VERSION} loaded" in agent_log(root).splitlines()[0]


def test_manifest_lists_hashes_the_agent_checks(tmp_path: Path) -> None:
    """The drive's manifest hashes are sha256 of exactly what render writes."""
    doc = instance_doc()
    img = make_drive(tmp_path / "c.img", doc)
    root = make_guest(tmp_path / "root", doc, img)
    assert run_agent(root).returncode == 0
    for rel, content in _rendered(tmp_path, doc).items():
        if (root / rel).is_symlink():
            continue  # resolv.conf: the image's symlink is kept
        assert hashlib.sha256((root / rel).read_bytes()).digest() == \
            hashlib.sha256(content).digest()


def test_payload_directory_spanning_several_clusters(tmp_path: Path) -> None:
    """The reader follows a directory's FAT chain past its first cluster: 100 extra files
    sorted before the payload push the manifest and payload entries into later clusters."""
    doc = instance_doc()
    extra = {f"netinject/aaa-{n:03d}": b"x" for n in range(100)}
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc, extra=extra))
    assert run_agent(root).returncode == 0
    assert "done: 3 file(s) installed" in agent_log(root)
    assert (root / "var/lib/netinject/instance-id").read_text().split()[0] == UUID_A


def test_installed_launcher_decides_later_boots_without_loading_the_agent(
        tmp_path: Path) -> None:
    """The launcher /usr/sbin/netinject-guest handles the later-boot check itself (built-in
    modules only). First boot: no state, it hands over to the agent module it finds in the
    tree. Later boot with udev's by-uuid link: it answers alone; the agent module is made
    unreadable to prove it is not loaded. Without the link: back to the agent."""
    from netinject.drive import volume_id
    from netinject.model import parse_uuid

    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", str(BUNDLE), "install", "--root",
                           str(root)], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    launcher = [str(root / "usr/sbin/netinject-guest"), "run", "--root", str(root)]
    first = subprocess.run(launcher, capture_output=True, text=True, check=False, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"netinject-guest {contract.VERSION} loaded" in first.stderr
    assert f"first boot of instance {UUID_A}" in first.stderr
    serial = f"{volume_id(parse_uuid(UUID_A)):08X}"
    (root / "dev/disk/by-uuid").mkdir(parents=True)
    os.symlink("../../vdb", root / f"dev/disk/by-uuid/{serial[:4]}-{serial[4:]}")
    module = root / "usr/lib/netinject/netinject_guest.py"
    saved = module.read_bytes()
    module.write_bytes(b"raise SystemExit('the agent module was loaded')\n")
    shutil.rmtree(root / "usr/lib/netinject/__pycache__", ignore_errors=True)
    before = snapshot(root)
    later = subprocess.run(launcher, capture_output=True, text=True, check=False, timeout=60)
    assert later.returncode == 0, later.stderr
    assert snapshot(root) == before
    said, result = later.stderr.splitlines()
    # The launcher's own result line: the contract's format, read by its parser.
    from netinject.guest.contract import parse_result

    assert parse_result(result) == {"outcome": "unchanged", "instance": UUID_A,
                                    "elapsed_ms": result.split("elapsed_ms=")[1].split()[0],
                                    "message": "not the first boot"}
    assert said.endswith(f"not the first boot of instance {UUID_A} (drive "
                         f"vfat:{serial.lower()} on /dev/vdb): nothing to do")
    assert agent_log(root).endswith(later.stderr)
    module.write_bytes(saved)
    os.unlink(root / f"dev/disk/by-uuid/{serial[:4]}-{serial[4:]}")
    again = subprocess.run(launcher, capture_output=True, text=True, check=False, timeout=60)
    assert again.returncode == 0, again.stderr
    assert f"netinject-guest {contract.VERSION} loaded" in again.stderr
    assert f"not the first boot of instance {UUID_A}" in again.stderr


def test_installed_launcher_hands_a_first_boot_to_the_agent(tmp_path: Path) -> None:
    """On a first boot the launcher loads the agent, which finds the drive through udev's
    by-label link. A by-label entry that is a FIFO (nothing udev makes) must not block:
    the agent opens non-blocking and ignores what is not a link."""
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", str(BUNDLE), "install", "--root",
                           str(root)], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    by_label = root / "dev/disk/by-label"
    by_label.mkdir(parents=True)
    os.mkfifo(by_label / "CONFIG-2")
    os.symlink("../../vdb", by_label / "config-2")
    launcher = [str(root / "usr/sbin/netinject-guest"), "run", "--root", str(root)]
    first = subprocess.run(launcher, capture_output=True, text=True, check=False, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"first boot of instance {UUID_A}" in first.stderr
    assert re.search(r"done: 3 file\(s\) installed, 0 NIC\(s\) renamed \(cpu [0-9.]+ ms\)",
                     first.stderr), first.stderr
    os.unlink(by_label / "config-2")  # only the FIFO: the agent scans, finds vdb
    os.unlink(root / "var/lib/netinject/instance-id")
    again = subprocess.run(launcher, capture_output=True, text=True, check=False, timeout=60)
    assert again.returncode == 0, again.stderr
    assert f"first boot of instance {UUID_A}" in again.stderr


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    """An image without /etc/udev/rules.d or /var/log: the agent creates the rules
    directory when it stages the rule, and the log directory when it writes its log."""
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "c.img", doc))
    shutil.rmtree(root / "etc/udev")
    shutil.rmtree(root / "var/log")
    assert run_agent(root).returncode == 0
    rendered = _rendered(tmp_path, doc)
    rule = "etc/udev/rules.d/70-persistent-net.rules"
    assert (root / rule).read_bytes() == rendered[rule]
    assert "done: 3 file(s) installed" in agent_log(root)


@pytest.mark.parametrize(("bits", "kib"), [(12, 4096), (16, 65536), (32, 65536)])
def test_agent_reads_fat12_fat16_and_fat32_drives(bits: int, kib: int, tmp_path: Path) -> None:
    """Real FAT12, FAT16 and FAT32 images made by mkfs.fat (blkid confirms which): the
    agent's reader finds and verifies the same payload on each."""
    from helpers.drive import blkid
    from netinject import drive
    from netinject.guest import contract, discovery
    from netinject.render import Options
    from netinject.sources.neutron import parse_document

    instance = parse_document(instance_doc()).instance
    data = drive.contents(instance, Options())
    img = tmp_path / "c.img"
    drive.build_vfat(data, img, drive.volume_id(instance.uuid), fat=(bits, kib))
    assert blkid(img)["VERSION"] == f"FAT{bits}"
    found = discovery.probe_label(str(img))
    assert found is not None
    manifest = contract.verify(discovery.read_payload(found))
    found.close()
    assert manifest.uuid == UUID_A
    payload = {p.name: b for p, b in data.files.items() if p.parts[0] == "netinject"}
    assert sorted(e.data for e in manifest.entries) == sorted(
        b for n, b in payload.items() if n != "manifest")
