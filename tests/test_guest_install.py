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
    assert set(SYNC_TRIGGERS) <= set(snapshot(root)) - set(pristine)
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


SYNC_TRIGGERS = ("lib/systemd/system/netinject-sync.service",
                 "lib/systemd/system/netinject-sync.timer",
                 "lib/systemd/system/netinject-sync-add@.service",
                 "lib/systemd/system/netinject-sync-remove@.service",
                 "lib/udev/rules.d/85-netinject-sync.rules",
                 "lib/systemd/system-generators/netinject-sync-generator",
                 "etc/systemd/system/timers.target.wants/netinject-sync.timer")
HOST_UNITS = Path("/lib/systemd/system")


def _with_host_targets(root: Path) -> None:
    """The host's systemd targets in the tree: units with default dependencies need
    sysinit.target and friends to verify."""
    for target in HOST_UNITS.glob("*.target"):
        if not (root / "lib/systemd/system" / target.name).exists():
            shutil.copy(target, root / "lib/systemd/system" / target.name)


def _verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                           f"/lib/systemd/system/{unit}"],
                          capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize("stack", ["ifupdown", "networkd", "netplan", "nm"])
def test_sync_triggers_are_installed_and_pass_systemd_analyze_verify(
        stack: str, tmp_path: Path) -> None:
    root = _image(tmp_path / "img", "systemd", stack)
    done = _agent("install", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert "enabled netinject-sync.timer (every 1800 s" in done.stdout
    for rel in SYNC_TRIGGERS[:-1]:
        assert (root / rel).is_file(), rel
    assert os.readlink(root / SYNC_TRIGGERS[-1]) == "/lib/systemd/system/netinject-sync.timer"
    assert (root / SYNC_TRIGGERS[5]).stat().st_mode & 0o777 == 0o755
    _with_host_targets(root)
    # Template instances as udev starts them. (A MAC's colons are valid in a unit name,
    # as in systemd's own systemd-backlight@backlight:acpi_video0.service, but
    # systemd-analyze verify 252 refuses any unit path with a colon, systemd's own
    # included: "Couldn't process aliases". So the add unit is verified with a MAC
    # written without them.)
    os.symlink("netinject-sync-add@.service",
               root / "lib/systemd/system/netinject-sync-add@fa163e000001.service")
    os.symlink("netinject-sync-remove@.service",
               root / "lib/systemd/system/netinject-sync-remove@eth1.service")
    for unit in ("netinject-sync.service", "netinject-sync.timer",
                 "netinject-sync-add@fa163e000001.service",
                 "netinject-sync-remove@eth1.service"):
        verify = _verify(root, unit)
        assert (verify.returncode, verify.stderr) == (0, ""), (unit, verify.stderr)
    timer = (root / "lib/systemd/system/netinject-sync.timer").read_text()
    assert re.findall(r"^(On\w+Sec|RandomizedDelaySec|AccuracySec)=(.*)$", timer, re.M) == [
        ("OnBootSec", "120s"), ("OnUnitActiveSec", "1800s"), ("RandomizedDelaySec", "300s"),
        ("AccuracySec", "30s")]
    add = (root / "lib/systemd/system/netinject-sync-add@.service").read_text()
    assert "ExecStart=/usr/sbin/netinject-guest sync --mac %i\n" in add
    assert "SuccessExitStatus=1\n" in add
    rules = (root / "lib/udev/rules.d/85-netinject-sync.rules").read_text()
    assert 'ENV{SYSTEMD_WANTS}+="netinject-sync-add@$attr{address}.service"' in rules
    assert 'RUN+="/bin/systemctl --no-block start netinject-sync-remove@%k.service"' in rules


def test_a_sysvinit_image_gets_no_sync_triggers(tmp_path: Path) -> None:
    root = _image(tmp_path / "img", "sysvinit")
    done = _agent("install", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert "no sync triggers" in done.stdout
    assert not any(os.path.lexists(root / rel) for rel in SYNC_TRIGGERS)


def _generate(root: Path, conf: str | None) -> tuple[subprocess.CompletedProcess[str], Path]:
    """netinject-sync-generator as installed, run as systemd runs a generator (three
    output directories), reading ``conf`` as its sync.conf."""
    conf_path = root / "etc/netinject/sync.conf"
    if conf is not None:
        conf_path.write_text(conf)
    out = root.parent / "generator"
    shutil.rmtree(out, ignore_errors=True)
    for d in ("normal", "early", "late"):
        (out / d).mkdir(parents=True)
    done = subprocess.run(["/bin/sh", str(root / SYNC_TRIGGERS[5]), str(out / "normal"),
                           str(out / "early"), str(out / "late")],
                          env={"PATH": "/usr/bin:/bin", "NETINJECT_SYNC_CONF": str(conf_path)},
                          capture_output=True, text=True, check=False, timeout=60)
    return done, out


def _files(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): os.readlink(p) if p.is_symlink() else p.read_text()
            for p in sorted(out.rglob("*")) if p.is_symlink() or p.is_file()}


def test_the_generator_sets_the_timers_period_from_sync_conf(tmp_path: Path) -> None:
    root = _image(tmp_path / "img", "systemd")
    assert _agent("install", "--root", str(root)).returncode == 0
    done, out = _generate(root, "# every 10 minutes\nperiod=600\n")
    assert (done.returncode, done.stderr) == (0, "")
    dropin = "normal/netinject-sync.timer.d/50-netinject-period.conf"
    assert _files(out) == {dropin: "[Timer]\nOnUnitActiveSec=\nOnBootSec=120s\n"
                                   "OnUnitActiveSec=600s\nRandomizedDelaySec=100s\n"
                                   "AccuracySec=10s\n"}
    # systemd takes the drop-in (placed where verify --root reads drop-ins).
    _with_host_targets(root)
    (root / "etc/systemd/system/netinject-sync.timer.d").mkdir(parents=True)
    shutil.copy(out / dropin, root / "etc/systemd/system/netinject-sync.timer.d/")
    verify = _verify(root, "netinject-sync.timer")
    assert (verify.returncode, verify.stderr) == (0, "")
    # The floor: the first check after boot waits one period, not 120 s; the timer's
    # accuracy is a second.
    done, out = _generate(root, "period=60\n")
    assert (done.returncode, done.stderr) == (0, "")
    assert _files(out) == {dropin: "[Timer]\nOnUnitActiveSec=\nOnBootSec=60s\n"
                                   "OnUnitActiveSec=60s\nRandomizedDelaySec=10s\n"
                                   "AccuracySec=1s\n"}
    # enabled=no masks the timer; no file: the unit's defaults.
    done, out = _generate(root, "enabled=no\n")
    assert _files(out) == {"normal/netinject-sync.timer": "/dev/null"}
    (root / "etc/netinject/sync.conf").unlink()
    done, out = _generate(root, None)
    assert (done.returncode, _files(out)) == (0, {})


@pytest.mark.parametrize(("conf", "said"), [
    ("period=abc\n", "line 1: period is not a number of seconds; ignored"),
    ("period=30\n", "line 1: period is not 60 to 604800 seconds; ignored"),
    ("period=99999999\n", "line 1: period is not a number of seconds; ignored"),
    ("period=0600\n", "line 1: period is not a number of seconds; ignored"),
    ("period=600\r\n", "line 1: period is not a number of seconds; ignored"),
    ("period=600; rm -rf /\n", "line 1: period is not a number of seconds; ignored"),
    ("\nperiod = 600\n", "line 2: not period=SECONDS or enabled=yes|no; ignored"),
    ("enabled=off\n", "line 1: not period=SECONDS or enabled=yes|no; ignored"),
])
def test_the_generator_ignores_a_bad_sync_conf_and_says_so(conf: str, said: str,
                                                           tmp_path: Path) -> None:
    root = _image(tmp_path / "img", "systemd")
    assert _agent("install", "--root", str(root)).returncode == 0
    done, out = _generate(root, conf)
    assert done.returncode == 0
    assert said in done.stderr
    assert _files(out) == {}  # the unit's own period stays


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["install", "--help"]])
def test_help_answers(argv: list[str]) -> None:
    done = _agent(*argv)
    assert done.returncode == 0
    assert "usage: netinject-guest" in done.stdout
