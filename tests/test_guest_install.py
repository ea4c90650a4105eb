"""`netinject-guest install/uninstall` on image trees: systemd unit, LSB script, the seed's
Debian persistent-net fix; checked with systemd-analyze and insserv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.guest import AGENT, BUNDLE, GUEST_PYTHON, snapshot

# Debian's generator rule (the part the seed's fix touches), as shipped up to Debian 8.
GENERATOR = """\
ACTION!="add", GOTO="persistent_net_generator_end"
SUBSYSTEM!="net", GOTO="persistent_net_generator_end"
# ignore interfaces with locally administered or null MAC addresses
# and VMWare, Hyper-V, KVM, Virtualbox and Xen virtual interfaces
ENV{MATCHADDR}=="?[2367abef]:*",        ENV{MATCHADDR}=""
ENV{MATCHADDR}=="00:00:00:00:00:00",    ENV{MATCHADDR}=""
LABEL="globally_administered_whitelist"
LABEL="persistent_net_generator_end"
"""


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    """The bundle an image builder runs (python3 netinject-guest.pyz install ...)."""
    return subprocess.run([GUEST_PYTHON, "-I", "-S", str(BUNDLE), *args], capture_output=True,
                          text=True, check=False, timeout=60)


def _image(root: Path, init: str, stack: str = "ifupdown") -> Path:
    """An image tree shaped like a Debian one of the given init and network stack."""
    (root / "sbin").mkdir(parents=True)
    (root / "lib/systemd/system").mkdir(parents=True)
    (root / "etc/init.d").mkdir(parents=True)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    if init == "systemd":
        os.symlink("/lib/systemd/systemd", root / "sbin/init")
    else:
        (root / "sbin/init").write_bytes(b"\x7fELF sysvinit")
    if stack == "ifupdown":
        (root / "sbin/ifup").write_bytes(b"\x7fELF ifup")
        os.symlink("/lib/systemd/system/networking.service", wants / "networking.service")
    elif stack == "networkd":
        os.symlink("/lib/systemd/system/systemd-networkd.service",
                   wants / "systemd-networkd.service")
    elif stack == "netplan":
        (root / "usr/sbin").mkdir(parents=True)
        (root / "usr/sbin/netplan").write_bytes(b"#!/usr/bin/python3\n")
        (root / "etc/netplan").mkdir(parents=True)
    elif stack == "nm":
        (root / "usr/sbin").mkdir(parents=True)
        (root / "usr/sbin/NetworkManager").write_bytes(b"\x7fELF NM")
        os.symlink("/lib/systemd/system/NetworkManager.service",
                   wants / "NetworkManager.service")
    (root / "lib/udev/rules.d").mkdir(parents=True)
    (root / "lib/udev/rules.d/75-persistent-net-generator.rules").write_text(GENERATOR)
    return root


def test_systemd_install_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    root = _image(tmp_path / "img", "systemd")
    done = _agent("install", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert "enabled netinject.service (systemd)" in done.stdout
    unit = root / "lib/systemd/system/netinject.service"
    # The backup directory exists before the first boot (no mkdirs on the boot path).
    assert (root / "var/lib/netinject/backup").stat().st_mode & 0o777 == 0o700
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/netinject.service") \
        == "/lib/systemd/system/netinject.service"
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                             "/lib/systemd/system/netinject.service"],
                            capture_output=True, text=True, check=False, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == ""
    # systemd allows repeated keys (two Before= lines): read the raw lines.
    text = unit.read_text()
    before = " ".join(m for m in re.findall(r"^Before=(.*)$", text, re.M))
    for target in ("network-pre.target", "networking.service", "systemd-networkd.service",
                   "NetworkManager.service"):
        assert target in before.split()
    assert re.search(r"^DefaultDependencies=no$", text, re.M)
    assert re.search(r"^Wants=network-pre.target$", text, re.M)
    assert "systemd-udev-trigger.service" in re.findall(r"^After=(.*)$", text, re.M)[0]
    assert (root / "usr/sbin/netinject-guest").stat().st_mode & 0o111
    assert (root / "usr/lib/netinject/netinject_guest.py").read_bytes() == AGENT.read_bytes()


@pytest.mark.parametrize("stack", ["ifupdown", "networkd", "netplan", "nm"])
def test_install_detects_the_network_stack_and_records_it(stack: str, tmp_path: Path) -> None:
    root = _image(tmp_path / "img", "systemd", stack)
    done = _agent("install", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert f"network stack: {stack} (" in done.stdout
    assert (root / "etc/netinject/stack").read_text() == stack + "\n"
    announce = root / "lib/systemd/system/netinject-announce.service"
    units = ["/lib/systemd/system/netinject.service"]
    if stack in ("networkd", "netplan"):
        # networkd sends no gratuitous ARP: the announcer is installed and enabled.
        assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/"
                                  "netinject-announce.service") == \
            "/lib/systemd/system/netinject-announce.service"
        text = announce.read_text()
        assert "After=netinject.service systemd-networkd.service" in text
        assert "ConditionPathExists=/run/netinject/announce" in text
        units.append("/lib/systemd/system/netinject-announce.service")
    else:
        assert not announce.exists()
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units],
                            capture_output=True, text=True, check=False, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == ""
    before = " ".join(re.findall(r"^Before=(.*)$", (root / units[0][1:]).read_text(), re.M))
    # netplan >= 1.2 generates in netplan-configure.service: the agent comes first.
    assert "netplan-configure.service" in before.split()
    assert _agent("uninstall", "--root", str(root)).returncode == 0
    assert not (root / "etc/netinject").exists()
    assert not announce.exists()


def test_install_refuses_an_image_without_a_network_stack(tmp_path: Path) -> None:
    root = _image(tmp_path / "img", "systemd", "none")
    before = snapshot(root)
    done = _agent("install", "--root", str(root))
    assert done.returncode == 2
    assert "error: cannot tell this image's network stack" in done.stderr
    assert "give --stack" in done.stderr
    assert snapshot(root) == before  # nothing installed
    forced = _agent("install", "--root", str(root), "--stack", "networkd")
    assert forced.returncode == 0, forced.stderr
    assert "network stack: networkd (given)" in forced.stdout
    assert (root / "etc/netinject/stack").read_text() == "networkd\n"


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit whose ExecStart is missing is reported."""
    root = _image(tmp_path / "img", "systemd")
    assert _agent("install", "--root", str(root)).returncode == 0
    (root / "usr/sbin/netinject-guest").unlink()
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                             "/lib/systemd/system/netinject.service"],
                            capture_output=True, text=True, check=False, timeout=60)
    assert verify.returncode != 0


def test_sysvinit_install_orders_before_networking(tmp_path: Path) -> None:
    root = _image(tmp_path / "img", "sysvinit")
    done = _agent("install", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert os.readlink(root / "etc/rcS.d/S01netinject") == "../init.d/netinject"
    # insserv resolves the LSB header against Debian's own rcS scripts (host packages
    # initscripts, ifupdown, udev), in a scratch copy.
    # (not named "etc": insserv then looks for etc/insserv.conf beside it)
    scratch = tmp_path / "sysv"
    (scratch / "init.d").mkdir(parents=True)
    for rl in "0123456S":
        (scratch / f"rc{rl}.d").mkdir()
    for script in Path("/etc/init.d").iterdir():
        if script.is_file() and not script.name.startswith("."):
            shutil.copy(script, scratch / "init.d" / script.name)
    shutil.copy(root / "etc/init.d/netinject", scratch / "init.d/netinject")
    out = subprocess.run(["insserv", "-n", "-s", "-p", str(scratch / "init.d")],
                         capture_output=True, text=True, check=False, timeout=60,
                         cwd=scratch / "init.d")
    assert out.returncode == 0, out.stderr
    order = {m.group(2): int(m.group(1))
             for m in re.finditer(r"^S:(\d+):S:(\S+)$", out.stdout, re.M)}
    assert "netinject" in order, out.stdout + out.stderr
    assert order["netinject"] < order["networking"]
    assert order["netinject"] > order["mountall.sh"]


def test_generator_fix_and_uninstall_restores_the_tree(tmp_path: Path) -> None:
    root = _image(tmp_path / "img", "systemd")
    pristine = snapshot(root)
    assert _agent("install", "--root", str(root)).returncode == 0
    fixed = (root / "etc/udev/rules.d/75-persistent-net-generator.rules").read_text()
    assert 'ENV{MATCHADDR}=="?[2367abef]:*",        GOTO="globally_administered_whitelist"' \
        in fixed
    assert 'ENV{MATCHADDR}=="?[2367abef]:*",        ENV{MATCHADDR}=""' not in fixed
    assert (root / "lib/udev/rules.d/75-persistent-net-generator.rules").read_text() == \
        GENERATOR
    done = _agent("uninstall", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert not (root / "var/lib/netinject").exists()
    leftover = {k: v for k, v in snapshot(root).items() if k not in pristine}
    assert all(v == ("dir",) for v in leftover.values()), leftover
    assert {k: v for k, v in snapshot(root).items() if k in pristine} == pristine


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["install", "--help"]])
def test_help_answers(argv: list[str]) -> None:
    done = _agent(*argv)
    assert done.returncode == 0
    assert "usage: netinject-guest" in done.stdout
