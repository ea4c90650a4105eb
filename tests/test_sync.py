"""netinject sync: the pure diff, and the command against a real qemu-ga on this host
whose file system stands in for the guest's (a guest-shaped tree under tmp_path that the
real agent first-booted from a real drive; the agent run with --root through
guest-exec, which installs files only: the live activation runs in the lead's real
guests, tests/test_e2e_day2.py).
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import QgaAgent as Agent
from helpers.guest import AGENT, GUEST_PYTHON, make_drive, make_guest, run_agent, snapshot
from netinject import hotplug, sync
from netinject.cli import main
from netinject.guest import contract
from netinject.guest.stacks import stack_named, stack_of
from netinject.hotplug import GuestSide
from netinject.render import Options
from netinject.sources.neutron import parse_document
from netinject.vm import testbed as vm

NEW_ROUTE = ("198.51.100.128/25", vm.HOST_IP)
NEW_DNS = "192.0.2.53"
NEW_ADDR = "192.0.2.11"


def changed_document() -> dict[str, Any]:
    """The test bed's instance after an operator's change in Neutron: one more host route
    and DNS server on its subnet, a smaller MTU on its network."""
    doc = copy.deepcopy(vm.document())
    doc["subnets"][0]["host_routes"].append({"destination": NEW_ROUTE[0],
                                             "nexthop": NEW_ROUTE[1]})
    doc["subnets"][0]["dns_nameservers"].append(NEW_DNS)
    doc["networks"][0]["mtu"] = 1400
    return doc


def two_nics() -> dict[str, Any]:
    port, subnet, network = vm.hotplug_port()
    return hotplug.with_port(vm.document(), port, [subnet], [network])


def bundle(doc: dict[str, Any], stack: str) -> tuple[dict[str, bytes],
                                                     contract.ManifestRecords]:
    """The files a sync brings a guest of ``stack`` for ``doc``, and the manifest."""
    raw, rendered = hotplug.bundle_for(parse_document(doc).instance, Options())
    records = contract.parse_manifest(contract.parse_bundle(raw)["manifest"])
    s = stack_named(stack)
    return {p: c for p, c in rendered.items() if stack_of(p) in (None, s)}, records


# -- the diff (pure) -------------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["ifupdown", "networkd", "netplan", "nm"])
def test_the_same_config_is_no_change(stack: str) -> None:
    files, manifest = bundle(vm.document(), stack)
    d = sync.diff(dict(files), files, manifest, manifest, stack_named(stack))
    assert not d.changed
    assert (d.files, d.nics, d.nics_known) == ((), (), True)


def test_each_changed_fact_is_named() -> None:
    """A route and a DNS server added, the port's fixed IP and the MTU changed, a NIC
    added: each is named; only the files that differ are listed (networkd: one file
    per NIC)."""
    old_files, old = bundle(vm.document(), "networkd")
    doc = changed_document()
    doc["ports"][0]["fixed_ips"][0]["ip_address"] = NEW_ADDR
    port, subnet, network = vm.hotplug_port()
    new_files, new = bundle(hotplug.with_port(doc, port, [subnet], [network]), "networkd")
    d = sync.diff(dict(old_files), new_files, old, new, stack_named("networkd"))
    assert d.changed
    assert [(f.change, f.path) for f in d.files] == [
        ("changed", "etc/resolv.conf"),
        ("changed", "etc/systemd/network/10-netinject-eth0.network"),
        ("added", "etc/systemd/network/10-netinject-eth1.link"),
        ("added", "etc/systemd/network/10-netinject-eth1.network"),
        ("changed", "etc/udev/rules.d/70-persistent-net.rules"),
    ]
    eth0, eth1 = d.nics
    assert eth0 == sync.NicChange(
        "eth0", "changed", vm.GUEST_MAC, None, (vm.MTU, 1400),
        addrs_added=(f"{NEW_ADDR}/24",), addrs_removed=(f"{vm.GUEST_IP}/24",),
        routes_added=(NEW_ROUTE,), dns_added=(NEW_DNS,))
    assert eth0.lines() == ["MTU 1450 -> 1400", f"+ address {NEW_ADDR}/24",
                            f"- address {vm.GUEST_IP}/24",
                            f"+ route {NEW_ROUTE[0]} via {NEW_ROUTE[1]}",
                            f"+ DNS server {NEW_DNS}"]
    assert (eth1.name, eth1.change, eth1.mac, eth1.addrs_added) == (
        "eth1", "added", vm.HOTPLUG_MAC, (f"{vm.HOTPLUG_IP}/24",))
    # ... and back: everything removed again, the NIC's files moved aside.
    back = sync.diff({**old_files, **new_files}, old_files, new, old,
                     stack_named("networkd"))
    assert [(f.change, f.path) for f in back.files if f.change == "removed"] == [
        ("removed", "etc/systemd/network/10-netinject-eth1.link"),
        ("removed", "etc/systemd/network/10-netinject-eth1.network")]
    assert [(n.name, n.change) for n in back.nics] == [("eth0", "changed"),
                                                       ("eth1", "removed")]
    assert back.nics[0].lines() == ["MTU 1400 -> 1450", f"+ address {vm.GUEST_IP}/24",
                                    f"- address {NEW_ADDR}/24",
                                    f"- route {NEW_ROUTE[0]} via {NEW_ROUTE[1]}",
                                    f"- DNS server {NEW_DNS}"]
    assert back.nics[1].routes_removed == ()  # (eth1's subnet has no gateway route here)


def test_a_gone_nic_removes_only_its_own_stacks_files() -> None:
    """The applied manifest lists every stack's files; only the guest's stack's files
    of a gone NIC are removed (the agent moves aside only those)."""
    for stack, removed in (("ifupdown", []), ("nm", [
            "etc/NetworkManager/system-connections/netinject-eth1.nmconnection"])):
        old_files, old = bundle(two_nics(), stack)
        new_files, new = bundle(vm.document(), stack)
        have = {**old_files, "etc/systemd/network/10-netinject-eth1.network": b"x"}
        d = sync.diff(have, new_files, old, new, stack_named(stack))
        assert [f.path for f in d.files if f.change == "removed"] == removed, stack
        assert [(n.name, n.change) for n in d.nics] == [("eth1", "removed")]


def test_a_file_already_gone_is_not_removed_again() -> None:
    old_files, old = bundle(two_nics(), "nm")
    new_files, new = bundle(vm.document(), "nm")
    gone = "etc/NetworkManager/system-connections/netinject-eth1.nmconnection"
    d = sync.diff({**old_files, gone: None}, new_files, old, new, stack_named("nm"))
    assert gone not in [f.path for f in d.files]


def test_without_a_record_the_files_decide() -> None:
    files, manifest = bundle(vm.document(), "ifupdown")
    same = sync.diff(dict(files), files, None, manifest, stack_named("ifupdown"))
    assert (same.changed, same.nics_known) == (False, False)
    eni = "etc/network/interfaces"
    other = sync.diff({**files, eni: b"iface eth0 inet dhcp\n"}, files, None, manifest,
                      stack_named("ifupdown"))
    assert [(f.change, f.path) for f in other.files] == [("changed", eni)]
    assert other.nics == ()


def test_a_kept_symlink_is_left_out() -> None:
    files, manifest = bundle(changed_document(), "ifupdown")
    have = {**files, "etc/resolv.conf": b"nameserver 127.0.0.53\n"}
    d = sync.diff(have, files, manifest, manifest, stack_named("ifupdown"),
                  kept={"etc/resolv.conf"})
    assert not d.changed
    assert d.kept == ("etc/resolv.conf",)


def test_unified_diffs_name_the_paths() -> None:
    change = sync.FileChange("etc/x", "changed", b"a\nb\n", b"a\nc")
    assert change.unified() == ("--- a/etc/x\n+++ b/etc/x\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
                                "\\ No newline at end of file\n")
    assert sync.FileChange("etc/y", "added", None, b"z\n").unified().startswith(
        "--- /dev/null\n+++ b/etc/y\n")


# -- the command against a real qemu-ga --------------------------------------------------


def booted(tmp_path: Path, doc: dict[str, Any] | None = None, stack: str | None = None
           ) -> tuple[Path, GuestSide]:
    """A guest tree the real agent first-booted from a real drive (``stack``: the image's
    record of its stack), and how to reach its agent."""
    doc = doc or vm.document()
    drive = make_drive(tmp_path / "drive.img", doc)
    root = make_guest(tmp_path / "root", doc, drive)
    if stack is not None:
        (root / "etc/netinject").mkdir(parents=True)
        (root / "etc/netinject/stack").write_text(f"{stack}\n")
    done = run_agent(root)
    assert "outcome=installed" in done.stderr, done.stderr
    return root, GuestSide(command=(GUEST_PYTHON, "-I", "-S", str(AGENT)), root=str(root),
                           sysfs=str(root / "sys"), recovery_timeout=2.5)


def run_sync(monkeypatch: pytest.MonkeyPatch, qga: Agent, side: GuestSide, doc: Any,
             tmp_path: Path, *extra: str) -> int:
    """``netinject sync DOC --qga SOCKET`` in this process, the agent reached as ``side``
    says (the guest tree)."""
    monkeypatch.setattr(hotplug, "GuestSide", lambda: side)
    path = tmp_path / f"doc-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(doc))
    return main(["sync", str(path), "--qga", str(qga.sock), *extra])


def config(root: Path) -> dict[str, Any]:
    """The guest's config: every file under etc/ exactly (modes, symlinks), and the
    manifest its agent last applied."""
    applied = root / "var/lib/netinject/applied-manifest"
    return {**{k: v for k, v in snapshot(root).items() if k.startswith("etc/")},
            "applied": applied.read_bytes() if applied.exists() else None}


def ends(root: Path) -> list[dict[str, str]]:
    """The transactions the guest's agent recorded."""
    status = root / "var/lib/netinject/apply-status"
    lines = status.read_text().splitlines() if status.exists() else []
    return [contract.parse_result(line) or {} for line in lines]


def test_sync_delivers_a_subnet_change_and_says_what_changed(
        qga: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    root, side = booted(tmp_path)
    assert run_sync(monkeypatch, qga, side, changed_document(), tmp_path) == 0
    out = capsys.readouterr().out
    for line in ("files (1 changed):", "  changed  /etc/network/interfaces",
                 "  kept     /etc/resolv.conf (a symlink the image manages: the agent "
                 "leaves it)", f"  eth0 ({vm.GUEST_MAC}) changed", "    MTU 1450 -> 1400",
                 f"    + route {NEW_ROUTE[0]} via {NEW_ROUTE[1]}",
                 f"    + DNS server {NEW_DNS}"):
        assert line in out.splitlines(), out
    assert "applied: the guest's files were updated (applied: 1 file(s) installed; " \
           "changed eth0)" in out
    assert "--- a/etc/network/interfaces" not in out  # (diffs: --dry-run or -v)
    eni = (root / "etc/network/interfaces").read_text()
    for line in ("mtu 1400", f"dns-nameservers {vm.HOST_IP} {NEW_DNS}",
                 f"up ip route add {NEW_ROUTE[0]} via {NEW_ROUTE[1]} dev eth0"):
        assert line in eni, eni
    assert [(e["outcome"], e.get("changed")) for e in ends(root)] == [("applied", "eth0")]
    # Again: nothing to change, and the guest is not touched (no transaction).
    before = snapshot(root, skip=())
    assert run_sync(monkeypatch, qga, side, changed_document(), tmp_path) == 0
    out = capsys.readouterr().out
    assert "files: none to change" in out
    assert "NICs: no change" in out
    assert "nothing to change: the guest was not touched" in out
    assert snapshot(root, skip=()) == before


def test_dry_run_shows_the_diff_and_reads_only(
        qga: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    root, side = booted(tmp_path)
    before = snapshot(root, skip=())
    assert run_sync(monkeypatch, qga, side, changed_document(), tmp_path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "--- a/etc/network/interfaces\n+++ b/etc/network/interfaces\n" in out
    assert "\n-        mtu 1450\n" in out
    assert "\n+        mtu 1400\n" in out
    assert f"+        up ip route add {NEW_ROUTE[0]} via {NEW_ROUTE[1]} dev eth0\n" in out
    assert out.rstrip().endswith("dry run: the guest was not touched")
    assert snapshot(root, skip=()) == before  # not a byte, not a log line


def test_json_output_for_tools(qga: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    _root, side = booted(tmp_path)
    assert run_sync(monkeypatch, qga, side, changed_document(), tmp_path, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["changed"] is True
    assert (out["agent"], out["stack"], out["instance"]) == (
        contract.VERSION, "ifupdown", vm.INSTANCE_UUID)
    assert [(f["path"], f["change"]) for f in out["files"]] == [
        ("/etc/network/interfaces", "changed")]
    assert "+        mtu 1400\n" in out["files"][0]["diff"]
    [eth0] = out["nics"]
    assert eth0["routes"]["added"] == [{"destination": NEW_ROUTE[0],
                                        "gateway": NEW_ROUTE[1]}]
    assert (eth0["dns"]["added"], eth0["mtu"]) == ([NEW_DNS], [vm.MTU, 1400])
    assert out["outcome"]["host"] == "applied"
    assert out["outcome"]["guest"] == "applied"
    assert out["outcome"]["nics"] == {"added": [], "changed": ["eth0"], "removed": []}


def test_a_gone_nics_files_are_moved_aside_on_networkd(
        qga: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A networkd guest first booted with two NICs; the second port is gone from the
    instance: its .network and .link files go (the agent moves them aside in the
    same transaction), and the NIC is named as removed."""
    root, side = booted(tmp_path, two_nics(), "networkd")
    eth1 = [root / f"etc/systemd/network/10-netinject-eth1.{s}" for s in ("network", "link")]
    assert all(p.exists() for p in eth1)
    assert run_sync(monkeypatch, qga, side, vm.document(), tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    for line in ("  removed  /etc/systemd/network/10-netinject-eth1.link",
                 "  removed  /etc/systemd/network/10-netinject-eth1.network",
                 "  changed  /etc/udev/rules.d/70-persistent-net.rules",
                 f"  eth1 ({vm.HOTPLUG_MAC}) removed", f"    - address {vm.HOTPLUG_IP}/24"):
        assert line in out, out
    assert not any(p.exists() for p in eth1)
    assert (root / "etc/systemd/network/10-netinject-eth0.network").exists()
    assert [e.get("removed") for e in ends(root)] == ["eth1"]


def test_the_wrong_guest_is_refused(qga: Agent, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The guest's applied manifest names another instance (the operator gave the wrong
    socket): exit 2, nothing touched."""
    root, side = booted(tmp_path)
    before = snapshot(root, skip=())
    other = vm.document(uuid="0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6")
    assert run_sync(monkeypatch, qga, side, other, tmp_path) == 2
    err = capsys.readouterr().err
    assert (f"the guest applied the config of instance {vm.INSTANCE_UUID}, not "
            "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6's: the wrong guest? Nothing was changed"
            ) in err
    assert snapshot(root, skip=()) == before


def test_system_metadata_out_is_written_once_the_guest_has_the_config(
        qga: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _root, side = booted(tmp_path)
    out = tmp_path / "sm.json"
    assert run_sync(monkeypatch, qga, side, two_nics(), tmp_path, "--dry-run",
                    "--system-metadata-out", str(out)) == 0
    assert not out.exists()  # (a dry run writes nothing)
    assert run_sync(monkeypatch, qga, side, two_nics(), tmp_path,
                    "--system-metadata-out", str(out)) == 0
    assert json.loads(json.loads(out.read_text())["ports_pattern"]) == {
        vm.PORT_ID: "0", vm.HOTPLUG_PORT_ID: "1"}


# -- bad input: each a clear error, the guest left as it was -----------------------------------


def test_a_guest_without_the_agent(qga: Agent, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    root, side = booted(tmp_path)
    before = snapshot(root, skip=())
    side = GuestSide(command=(str(tmp_path / "no-such-agent"),), root=side.root,
                     sysfs=side.sysfs)
    assert run_sync(monkeypatch, qga, side, changed_document(), tmp_path) == 1
    err = capsys.readouterr().err
    assert f"could not run {tmp_path}/no-such-agent in the guest (is the netinject agent " \
           "installed in the image? live changes need agent 0.2.0 or newer)" in err
    assert snapshot(root, skip=()) == before


def test_an_agent_too_old_to_activate(qga: Agent, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A STAND-IN for the 0.1.0 agent (it answers --version as that agent did, and
    records any other call): refused before anything is sent, naming both versions."""
    root, side = booted(tmp_path)
    before = snapshot(root, skip=())
    calls = tmp_path / "calls"
    old = tmp_path / "old-agent"
    old.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'netinject-guest 0.1.0' && "
                   f"exit 0\necho \"$@\" >> {calls}\nexit 1\n")
    old.chmod(0o755)
    side = GuestSide(command=(str(old),), root=side.root, sysfs=side.sysfs)
    assert run_sync(monkeypatch, qga, side, changed_document(), tmp_path, "--dry-run") == 1
    err = capsys.readouterr().err
    assert ("the guest's netinject agent is 0.1.0; live changes need 0.2.0 or newer (this "
            f"netinject ships {contract.VERSION}): update the agent in the image") in err
    assert not calls.exists()
    assert snapshot(root, skip=()) == before


def test_a_sync_while_a_boot_time_install_holds_the_lock_says_try_again(
        qga: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The agent's lock (/var/lib/netinject/apply.lock) is held, as a boot-time install
    holds it (here the test holds it, for the real agent's whole wait, shortened from its
    default 10 s to 1.5 s with the agent's --lock-wait): the apply is refused with nothing
    changed, and the command says so, 'try again', exit 1. The host waits out the agent's
    wait (GuestSide.apply_timeout; see
    test_hotplug.py::test_the_host_waits_for_an_apply_longer_than_one_agent_call)."""
    root, side = booted(tmp_path)
    side = dataclasses.replace(side, lock_wait=1.5)
    before = config(root)
    fd = os.open(root / "var/lib/netinject/apply.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        t0 = time.monotonic()
        status = run_sync(monkeypatch, qga, side, changed_document(), tmp_path)
        took = time.monotonic() - t0
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert status == 1, err
    assert took >= 1.5, took
    assert "the guest's files are unchanged" in err
    assert ("another netinject run holds /var/lib/netinject/apply.lock (a boot-time "
            "install or another live change) after 1.5 s: nothing was changed; try again"
            ) in err
    assert "reply lost" not in err
    assert config(root) == before


def test_a_stack_this_netinject_does_not_know(
        qga: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The image records a stack netinject has no descriptor for: refused before the
    agent is asked to change anything, exit 1."""
    root, side = booted(tmp_path)
    (root / "etc/netinject").mkdir()
    (root / "etc/netinject/stack").write_text("wicked\n")
    before = snapshot(root, skip=())
    assert run_sync(monkeypatch, qga, side, changed_document(), tmp_path) == 1
    assert ("the guest's /etc/netinject/stack: unknown network stack 'wicked' (known: "
            "ifupdown, networkd, netplan, nm)") in capsys.readouterr().err
    assert snapshot(root, skip=()) == before


CHROOT = """\
#!/bin/sh
# The real agent with root / (a live change, not --root): in a private mount and network
# namespace (no NIC of this machine's in sight), chrooted into the guest tree with this
# machine's python3 bound in. --root and --sysfs are dropped (the tree is /).
n=$#; i=0
while [ "$i" -lt "$n" ]; do
  a=$1; shift; i=$((i+1))
  case "$a" in
    --root|--sysfs) shift; i=$((i+1)) ;;
    *) set -- "$@" "$a" ;;
  esac
done
exec unshare --mount --net -- /bin/sh -c '
  set -e
  R=$1; shift
  mount --bind {python} "$R/usr/bin/python3"
  for d in {stdlib} /usr/lib/x86_64-linux-gnu /usr/lib64; do mount --bind "$d" "$R$d"; done
  mount --bind {agent_dir} "$R/opt/netinject"
  exec chroot "$R" /usr/bin/python3 -I -S /opt/netinject/{agent} "$@"
' sh {root} "$@"
"""


@pytest.mark.root
def test_a_stack_the_guest_cannot_change_live_is_refused_and_said(
        qga: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The image says systemd-networkd (/etc/netinject/stack) but networkctl is not
    there: the real agent, run live (root /, chrooted into the guest tree inside its own
    mount and network namespaces), refuses before changing anything, and the command
    shows its words, exit 1."""
    root, side = booted(tmp_path, stack="networkd")
    python = os.path.realpath(GUEST_PYTHON)
    stdlib = f"/usr/lib/{Path(python).name}"  # (Debian's python3.X)
    for d in (stdlib, "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/opt/netinject",
              "/usr/bin"):
        (root / d.lstrip("/")).mkdir(parents=True)
    (root / "usr/bin/python3").touch()
    for link in ("lib", "lib64"):  # (usrmerge, as this machine's python3 expects)
        os.symlink(f"usr/{link}", root / link)
    wrapper = tmp_path / "agent-in-chroot"
    wrapper.write_text(CHROOT.format(python=python, stdlib=stdlib,
                                     agent_dir=AGENT.parent, agent=AGENT.name, root=root))
    side = GuestSide(command=("/bin/sh", str(wrapper)), root=side.root, sysfs=side.sysfs)
    before = config(root)
    assert run_sync(monkeypatch, qga, side, changed_document(), tmp_path) == 1
    captured = capsys.readouterr()
    assert "stack networkd" in captured.out
    assert ("unchanged: the guest's files are unchanged (unchanged: networkctl is not "
            "installed: this networkd image cannot take live changes)") in captured.err
    assert config(root) == before


UID = "5f0c2a1e-7b3d-4c8e-9a6f-1d2e3c4b5a69"


@pytest.mark.parametrize(("argv", "words"), [
    (["sync", "--qga", "s"], "give an instance document (INSTANCE.json), --network-data, or "
                             "--cloud NAME --server ID"),
    (["sync", "--cloud", "c", "--qga", "s"], "--cloud and --server go together"),
    (["sync", "doc.json", "--cloud", "c", "--server", UID, "--qga", "s"],
     "give an instance document, --network-data, or --cloud with --server: one of them"),
    (["sync", "--cloud", "c", "--server", "nope", "--qga", "s"],
     "--server: 'nope' is not a uuid"),
    (["hotplug", "attach", "--cloud", "c", "--port", UID, "--qmp", "q", "--qga", "s"],
     "--cloud and --server go together"),
    (["hotplug", "attach", "doc.json", "--cloud", "c", "--server", UID, "--port", UID,
      "--qmp", "q", "--qga", "s"], "give an instance document or --cloud with --server"),
    (["hotplug", "attach", "--cloud", "c", "--server", UID, "--port", UID, "--subnet",
      "s.json", "--qmp", "q", "--qga", "s"], "--subnet and --network go with an instance "
                                             "document"),
    (["hotplug", "detach", "--cloud", "c", "--server", UID, "--port", UID,
      "--system-metadata-out", "x", "--qmp", "q", "--qga", "s"],
     "--system-metadata-out goes with an instance document"),
    (["hotplug", "attach", "--cloud", "c", "--server", UID, "--port", "p1", "--qmp", "q",
      "--qga", "s"], "--port: 'p1' is not a uuid"),
    (["hotplug", "detach", "--port-id", UID, "--qmp", "q", "--qga", "s"],
     "give the instance document (INSTANCE.json) or --cloud NAME --server ID"),
    (["hotplug", "attach", "doc.json", "--port", "p.json", "--image", "i", "--qmp", "q",
      "--qga", "s"], "--image and --hostname go with --cloud and --server"),
])
def test_usage_errors_exit_2_before_anything_is_touched(
        argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["sync", "--help"], ["hotplug", "attach", "--help"],
                                  ["hotplug", "detach", "--help"]])
def test_the_commands_answer_help(argv: list[str], capsys: pytest.CaptureFixture[str]
                                  ) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--cloud NAME" in out
    assert "Exit status: 0" in out
