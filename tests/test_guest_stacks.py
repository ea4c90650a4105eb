"""The agent on images of each network stack: which of the drive's files it installs,
netplan's move-aside and generate (netplan's real generator, run on the guest tree), and
the gratuitous-ARP announcer for networkd (a real AF_PACKET send, captured on a veth
peer in a namespace this test makes)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from helpers import peers
from helpers.guest import (
    AGENT,
    GUEST_PYTHON,
    agent_log,
    instance_doc,
    make_drive,
    make_guest,
    run_agent,
    snapshot,
)
from netinject.guest.contract import Outcome, parse_result
from netinject.guest.log import Log
from netinject.vm.image import NETPLAN_DHCP

NETPLAN_GENERATOR = Path("/usr/libexec/netplan/generate")  # netplan.io's, on this host
UUID_A = "1e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0"
DOC = "multi-nic-reordered"


def _guest(tmp_path: Path, stack: str | None, mutate: object = None) -> Path:
    doc = instance_doc(DOC)
    img = make_drive(tmp_path / "config.img", doc, mutate_manifest=mutate)
    root = make_guest(tmp_path / "root", doc, img)
    if stack is not None:
        (root / "etc/netinject").mkdir(parents=True)
        (root / "etc/netinject/stack").write_text(stack + "\n")
    return root


def _steps_aside(root: Path, reason: str) -> None:
    """The agent runs, logs ``reason`` and changes nothing in the tree."""
    before = snapshot(root)
    assert run_agent(root).returncode == 0
    assert reason in agent_log(root)
    assert snapshot(root) == before


def _installed(root: Path, before: dict[str, object]) -> set[str]:
    after = snapshot(root)
    return {k for k, v in after.items() if v != before.get(k) and v[0] == "file"
            and not k.startswith("var/lib/netinject")}


def test_networkd_image_gets_networkd_files_and_the_addresses_to_announce(
        tmp_path: Path) -> None:
    root = _guest(tmp_path, "networkd")
    before = snapshot(root)
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    installed = _installed(root, before)
    assert installed == {
        "etc/systemd/network/10-netinject-eth0.link",
        "etc/systemd/network/10-netinject-eth0.network",
        "etc/systemd/network/10-netinject-eth1.link",
        "etc/systemd/network/10-netinject-eth1.network",
        "etc/systemd/network/10-netinject-eth2.link",
        "etc/systemd/network/10-netinject-eth2.network",
        "etc/udev/rules.d/70-persistent-net.rules", "etc/hostname",
        "run/netinject/announce"}, agent_log(root)
    # The image's ifupdown file (none of networkd's business) is untouched.
    assert (root / "etc/network/interfaces").read_bytes() == before[
        "etc/network/interfaces"][1]
    log = agent_log(root)
    assert "network stack: networkd" in log
    assert "IPv4 address(es) left for netinject-announce" in log
    lines = (root / "run/netinject/announce").read_text().splitlines()
    assert lines
    assert all(line.split()[0] in ("eth0", "eth1", "eth2") for line in lines)


def test_nm_image_gets_private_keyfiles(tmp_path: Path) -> None:
    root = _guest(tmp_path, "nm")
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    keyfiles = sorted((root / "etc/NetworkManager/system-connections").iterdir())
    assert [k.name for k in keyfiles] == ["netinject-eth0.nmconnection",
                                          "netinject-eth1.nmconnection",
                                          "netinject-eth2.nmconnection"]
    for k in keyfiles:
        assert stat.S_IMODE(k.stat().st_mode) == 0o600
    assert not (root / "run/netinject/announce").exists()  # NM announces by itself
    assert not (root / "etc/systemd/network").exists()


def _netplan_guest(tmp_path: Path, generator: Path) -> Path:
    root = _guest(tmp_path, "netplan")
    (root / "etc/netplan").mkdir()
    (root / "etc/netplan/50-cloud-init.yaml").write_text(NETPLAN_DHCP)
    (root / "etc/netplan/50-cloud-init.yaml").chmod(0o600)
    (root / "etc/netplan/01-renderer.yaml").write_text(
        "network:\n  version: 2\n  renderer: networkd\n")
    (root / "etc/netplan/01-renderer.yaml").chmod(0o600)
    (root / "usr/lib/netplan").mkdir(parents=True)
    os.symlink(generator, root / "usr/lib/netplan/generate")
    return root


def test_netplan_image_moves_the_dhcp_yaml_aside_and_generates(tmp_path: Path) -> None:
    root = _netplan_guest(tmp_path, NETPLAN_GENERATOR)
    # What netplan's systemd generator made at boot, before any unit: the DHCP config.
    assert peers.netplan_generate(root).returncode == 0
    assert (root / "run/systemd/network/10-netplan-all-eth.network").exists()
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    log = agent_log(root)
    assert "moved /etc/netplan/50-cloud-init.yaml aside" in log, log
    assert "ran netplan generate" in log
    netplan = root / "etc/netplan"
    assert sorted(p.name for p in netplan.iterdir()) == ["01-renderer.yaml",
                                                         "90-netinject.yaml"]
    assert stat.S_IMODE((netplan / "90-netinject.yaml").stat().st_mode) == 0o600
    backup = root / f"var/lib/netinject/backup/{UUID_A}/etc%netplan%50-cloud-init.yaml"
    assert backup.read_text() == NETPLAN_DHCP
    # netplan's real generator wrote networkd's files from ours alone: static, no DHCP.
    generated = root / "run/systemd/network"
    names = sorted(p.name for p in generated.iterdir())
    assert "10-netplan-eth0.network" in names
    assert "10-netplan-eth1.network" in names
    assert not any("all-eth" in n for n in names)  # the DHCP config is gone
    eth0 = (generated / "10-netplan-eth0.network").read_text()
    assert "Address=" in eth0
    assert "DHCP=" not in eth0
    assert (root / "var/lib/netinject/instance-id").exists()


def test_netplan_generate_failure_rolls_everything_back(tmp_path: Path) -> None:
    """A generator that fails (here /bin/false in its place) leaves the image as it
    was: the DHCP YAML back, ours gone, no instance recorded; boot goes on with DHCP."""
    root = _netplan_guest(tmp_path, Path("/bin/false"))
    before = snapshot(root)
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    log = agent_log(root)
    assert "netplan generate failed" in log
    assert "stepping aside" in log
    after = snapshot(root)
    etc = {k: v for k, v in after.items() if k.startswith("etc/")}
    assert etc == {k: v for k, v in before.items() if k.startswith("etc/")}
    assert not (root / "var/lib/netinject/instance-id").exists()


def test_drive_without_the_images_stack_steps_aside(tmp_path: Path) -> None:
    """A drive made before netinject knew networkd (ifupdown files only)."""
    def drop_networkd(lines: list[str]) -> list[str]:
        return [line for line in lines if "etc/systemd/network/" not in line]

    _steps_aside(_guest(tmp_path, "networkd", drop_networkd), "carries no networkd config")


def test_unknown_stack_record_steps_aside(tmp_path: Path) -> None:
    _steps_aside(_guest(tmp_path, "$(reboot)"), "names an unknown stack")


CAPTURE = r'''
import socket, struct, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import netinject_guest as g

rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
rx.bind(("peer0", 0))
rx.settimeout(0.2)
log = g.Log(sys.argv[2], quiet=True)
n = g.announce(sys.argv[2], log, wait=5.0, interval=0.05)
log.flush()
frames = []
end = time.monotonic() + 2
while time.monotonic() < end:
    try:
        frames.append(rx.recv(2048))
    except socket.timeout:
        break
garps = [f for f in frames if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x01"
         and f[28:32] == f[38:42] and f[0:6] == b"\xff" * 6]
print(n, len(garps), socket.inet_ntoa(garps[0][28:32]) if garps else "-",
      garps[0][22:28].hex(":") if garps else "-")
'''


def test_announce_sends_gratuitous_arps_once_the_address_is_up(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "run/netinject").mkdir(parents=True)
    (root / "run/netinject/announce").write_text("eth0 192.0.2.10\n")
    os.symlink("/proc", root / "proc")
    os.symlink("/sys", root / "sys")
    (root / "var/log").mkdir(parents=True)
    mac = "fa:16:3e:00:00:0a"
    with peers.netns_with_nics({"eth0": mac}) as ns:
        subprocess.run(["ip", "-n", ns, "addr", "add", "192.0.2.10/24", "dev", "eth0"],
                       check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
        done = subprocess.run(["ip", "netns", "exec", ns, GUEST_PYTHON, "-c", CAPTURE,
                               str(AGENT.parent), str(root)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    announced, garps, ip, sender = done.stdout.split()
    assert (announced, garps, ip, sender) == ("1", "3", "192.0.2.10", mac)
    assert "announced 192.0.2.10 on eth0 (3 gratuitous ARPs)" in agent_log(root)


def test_announce_gives_up_on_an_address_that_never_comes_up(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "run/netinject").mkdir(parents=True)
    (root / "run/netinject/announce").write_text("eth0 192.0.2.99\nbad line\n")
    os.symlink("/proc", root / "proc")
    (root / "var/log").mkdir(parents=True)
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", str(AGENT), "announce", "--root",
                           str(root), "--wait", "0.3"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "192.0.2.99 on eth0 did not come up within 0 s: not announced" in agent_log(root)


@pytest.mark.parametrize("record", ["announce eth0 192.0.2.010", "announce eth0 1.2.3",
                                    "announce wlan0 192.0.2.1", "announce eth0 ::1"])
def test_bad_announce_record_is_refused(record: str, tmp_path: Path) -> None:
    _steps_aside(_guest(tmp_path, "networkd", lambda lines: [*lines, record]),
                 "bad announce record")


def test_apply_on_a_tree_installs_the_images_stack_files_and_brings_nothing_up(
        tmp_path: Path) -> None:
    """A live change on a networkd image tree (``--root``: tests, image builds): this
    stack's files and the shared ones are installed, the NICs whose config changed are
    named in the typed result, and nothing of the host's is brought up or down (no
    networkctl runs: the tree has none, and a refusal would say so)."""
    from netinject.hotplug import bundle_for
    from netinject.render import Options
    from netinject.sources.neutron import parse_document

    root = _guest(tmp_path, "networkd")
    raw, files = bundle_for(parse_document(instance_doc(DOC)).instance, Options())
    before = snapshot(root)
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", str(AGENT), "apply", "--txid", "t1",
                           "--root", str(root), "--sysfs", str(root / "sys")],
                          input=raw, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout
    said = parse_result(done.stdout.decode())
    assert said is not None
    assert said["outcome"] == Outcome.APPLIED
    assert said["changed"] == "eth0,eth1,eth2"  # no record of an older config: all
    after = snapshot(root)
    changed = {k for k in after if k.startswith("etc/") and after[k][0] == "file"
               and after[k] != before.get(k)}
    assert changed == {p for p in files if p.startswith(("etc/systemd/network/10-netinject-",
                                                         "etc/udev/"))}
    assert (root / "var/lib/netinject/applied-manifest").exists()
    # The same bundle again: nothing to change, nothing touched.
    again = subprocess.run([GUEST_PYTHON, "-I", "-S", str(AGENT), "apply", "--txid", "t2",
                            "--root", str(root), "--sysfs", str(root / "sys")],
                           input=raw, capture_output=True, timeout=60, check=False)
    said = parse_result(again.stdout.decode())
    assert (again.returncode, said and said["outcome"]) == (1, Outcome.UNCHANGED)
    assert {k: v for k, v in snapshot(root).items() if k.startswith("etc/")} == \
        {k: v for k, v in after.items() if k.startswith("etc/")}



@pytest.mark.parametrize("value", ["nan", "-1", "inf", "1e9", "ten"])
def test_a_lock_wait_that_is_not_a_duration_is_refused_before_anything(
        value: str, tmp_path: Path) -> None:
    """``--lock-wait`` takes 0 to 3600 seconds: anything else is a usage error (exit 2)
    naming the option and the value, and the tree is untouched (no lock file made)."""
    root = _guest(tmp_path, "networkd")
    before = snapshot(root)
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", str(AGENT), "apply", "--txid", "t1",
                           "--root", str(root), "--lock-wait", value],
                          input=b"", capture_output=True, timeout=60, check=False)
    assert done.returncode == 2
    assert (f"argument --lock-wait: {value!r} is not a number of seconds from 0 to 3600"
            ).encode() in done.stderr
    assert snapshot(root) == before

# -- issue 20 ------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["nm", "netplan"])
def test_a_replaced_private_file_gets_the_manifests_mode_and_roots_ownership(
        stack: str, tmp_path: Path) -> None:
    """A2: an old keyfile or YAML of ours (an image made from a booted instance) that is
    0644 or another user's: NetworkManager ignores such a keyfile (the guest silently
    gets DHCP), netplan warns. Replaced, it is 0600 root:root as the manifest says; a
    file elsewhere keeps its mode and owner (test_guest_hardening)."""
    if stack == "nm":
        root = _guest(tmp_path, "nm")
        old = root / "etc/NetworkManager/system-connections/netinject-eth0.nmconnection"
    else:
        root = _netplan_guest(tmp_path, Path("/bin/true"))
        old = root / "etc/netplan/90-netinject.yaml"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text("# an old one\n")
    old.chmod(0o666 if stack == "netplan" else 0o644)
    os.chown(old, 1000, 1000)
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    assert "done:" in agent_log(root), agent_log(root)
    st = old.stat()
    assert old.read_text() != "# an old one\n"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)


SLEEPER = """#!/bin/sh
# A generator that never ends, and starts a child that would outlive it.
sleep 1000 &
echo $! >> {pids}
wait
"""


def _run_joined(root: Path, *settings: str) -> subprocess.CompletedProcess[str]:
    """The joined agent's boot service with module settings changed first (a shorter
    generator bound, another dist-packages directory), as the guest runs it."""
    code = (f"import sys; sys.path.insert(0, {str(AGENT.parent)!r}); "
            f"import netinject_guest as a; {'; '.join(settings)}; "
            f"sys.exit(a.run(a.RunArgs({str(root)!r}, wait=0, quiet=True)))")
    return subprocess.run([GUEST_PYTHON, "-I", "-S", "-c", code], capture_output=True,
                          text=True, timeout=30, check=False)


def _gone(pid: int) -> bool:
    """The process has ended (a zombie left for init to reap counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_a_netplan_generator_that_never_ends_is_killed_and_rolled_back(
        tmp_path: Path) -> None:
    """A3: the agent ran netplan's generator without a time limit. Bounded now: after
    Netplan.timeout it kills the generator's process group (its child too), rolls back
    as for a failed generate, and boot goes on with the image's config."""
    pids = tmp_path / "sleepers"
    gen = tmp_path / "generate"
    gen.write_text(SLEEPER.format(pids=pids))
    gen.chmod(0o755)
    root = _netplan_guest(tmp_path, gen)
    (root / "usr/lib/netplan/generate").unlink()
    (root / "usr/libexec/netplan").mkdir(parents=True)
    os.symlink(gen, root / "usr/libexec/netplan/generate")
    before = snapshot(root)
    try:
        done = _run_joined(root, "a.NETPLAN.timeout = 0.5")
        assert done.returncode == 0, done.stderr
        log = agent_log(root)
        # Ours, then the image's own files again after the rollback: both bounded.
        steps = [line for line in log.splitlines() if line.startswith("netinject: [")]
        assert sum("netplan generate did not finish within 0.5 s: killed it" in line
                   for line in steps) == 2, log
        said = parse_result(log)
        assert said is not None
        assert said["outcome"] == Outcome.ROLLED_BACK
        after = snapshot(root)
        assert {k: v for k, v in after.items() if k.startswith("etc/")} == \
            {k: v for k, v in before.items() if k.startswith("etc/")}
        assert not (root / "var/lib/netinject/instance-id").exists()
        started = [int(p) for p in pids.read_text().split()]
        assert len(started) == 2
        assert all(_gone(p) for p in started), started
    finally:
        for p in (pids.read_text().split() if pids.exists() else []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(p), signal.SIGKILL)


def test_a_fifo_among_the_netplan_files_cannot_hold_the_boot(tmp_path: Path) -> None:
    """A3 with netplan's real generator: it blocks opening a FIFO in /etc/netplan."""
    root = _netplan_guest(tmp_path, NETPLAN_GENERATOR)
    os.mkfifo(root / "etc/netplan/60-fifo.yaml", 0o600)
    t0 = time.monotonic()
    done = _run_joined(root, "a.NETPLAN.timeout = 0.5")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - t0 < 10
    log = agent_log(root)
    assert "netplan generate did not finish within 0.5 s: killed it" in log, log
    assert (root / "etc/netplan/50-cloud-init.yaml").read_text() == NETPLAN_DHCP
    assert not (root / "etc/netplan/90-netinject.yaml").exists()
    assert not (root / "var/lib/netinject/instance-id").exists()


# What an image may have in /etc/netplan, and whether the agent moves it aside (A4).
NETPLAN_FILES = {
    # An escaped key is still 'ethernets' to netplan (a text search missed it).
    "10-escaped.yaml": ('network:\n  version: 2\n  "\\x65thernets":\n    all-eth:\n'
                        '      match: {name: "eth*"}\n      dhcp4: true\n', True),
    # The word in a comment or a value configures no ethernet (a text search moved these).
    "20-comment.yaml": ("# ethernets: configured by netinject\nnetwork:\n  version: 2\n"
                        "  renderer: networkd\n", False),
    "30-wifi.yaml": ("network:\n  wifis:\n    wlan0:\n      access-points:\n"
                     "        ethernets: {password: ethernets}\n", False),
    "40-flow.yaml": ("network: {version: 2, ethernets: {eth0: {dhcp4: true}}}\n", True),
    "50-bond.yaml": ("network:\n  bonds:\n    bond0:\n      interfaces: [eth0, eth1]\n", True),
    "60-no-ethernets.yaml": ("network:\n  version: 2\n  ethernets: {}\n", False),
    "70-empty.yaml": ("", False),
    # netplan refuses what it cannot parse, so it configures nothing: moved aside.
    "80-broken.yaml": ("network:\n  ethernets: [\n", True),
    "85-not-a-mapping.yaml": ("network:\n  ethernets: eth0\n", True),
}


def test_netplan_files_are_judged_by_their_parsed_content(tmp_path: Path) -> None:
    """A4: which of the image's netplan files make way for ours, decided from the parsed
    document (PyYAML's safe_load), not a text search for b"ethernets"."""
    from netinject.guest import contract, stacks

    netplan = tmp_path / "etc/netplan"
    netplan.mkdir(parents=True)
    for name, (text, _) in NETPLAN_FILES.items():
        (netplan / name).write_text(text)
    (netplan / "90-netinject.yaml").write_text("network:\n  ethernets: {eth0: {}}\n")
    os.mkfifo(netplan / "95-fifo.yaml")
    ours = contract.Manifest(UUID_A, [contract.Entry("etc/netplan/90-netinject.yaml", b"",
                                                     0o600)], [])
    ours_paths = {e.path for e in ours.entries}
    assert stacks.NETPLAN.aside(str(tmp_path), ours_paths, Log(str(tmp_path), True)) == [
        f"etc/netplan/{name}" for name, (_, aside) in NETPLAN_FILES.items() if aside]


def test_an_escaped_ethernets_key_is_moved_aside_at_boot(tmp_path: Path) -> None:
    """A4 as the guest runs it (python3 -IS: PyYAML from dist-packages), with netplan's
    real generator: the image's DHCP config behind an escaped key is moved aside, and
    the generated config is ours alone."""
    root = _netplan_guest(tmp_path, NETPLAN_GENERATOR)
    escaped = NETPLAN_DHCP.replace("  ethernets:", '  "\\x65thernets":')
    (root / "etc/netplan/50-cloud-init.yaml").write_text(escaped)
    assert peers.netplan_generate(root).returncode == 0  # netplan reads it as ethernets
    assert (root / "run/systemd/network/10-netplan-all-eth.network").exists()
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    log = agent_log(root)
    assert "moved /etc/netplan/50-cloud-init.yaml aside" in log, log
    names = sorted(p.name for p in (root / "run/systemd/network").iterdir())
    assert "10-netplan-eth0.network" in names
    assert not any("all-eth" in n for n in names), names


def test_without_pyyaml_the_netplan_image_keeps_its_config(tmp_path: Path) -> None:
    """The image's files cannot be judged without a YAML parser (netplan.io depends on
    python3-yaml, so only a broken image lacks it): the agent steps aside."""
    root = _netplan_guest(tmp_path, NETPLAN_GENERATOR)
    before = snapshot(root)
    done = _run_joined(root, "a.NETPLAN.dist_packages = '/nonexistent'")
    assert done.returncode == 0, done.stderr
    assert "cannot read the image's netplan files: no PyYAML (python3-yaml) in " \
           "/nonexistent" in agent_log(root)
    assert snapshot(root) == before


def test_netplan_reloads_networkd_for_its_dropin_only_where_networkd_is_the_backend(
        tmp_path: Path) -> None:
    """The drop-in for a .network netplan generated: networkd is told (reload) only when
    that .network is there; under NetworkManager's renderer there is none, networkd may
    not run, and a reload for it would fail the change."""
    from netinject.guest.stacks import NETPLAN

    dropin = "etc/systemd/network/10-netplan-eth1.network.d/90-netinject.conf"
    assert not NETPLAN.networkd_dropin(str(tmp_path), dropin)
    generated = tmp_path / "run/systemd/network/10-netplan-eth1.network"
    generated.parent.mkdir(parents=True)
    generated.write_text("[Match]\n")
    assert NETPLAN.networkd_dropin(str(tmp_path), dropin)
    assert not NETPLAN.networkd_dropin(str(tmp_path), "etc/netplan/90-netinject.yaml")
