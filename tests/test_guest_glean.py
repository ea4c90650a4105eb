"""Next to glean in the same image (guest/others.py, guest/image.py): install gives each
of glean's units a drop-in (after the agent; glean's command line extended by
$NETINJECT_GLEAN_ARGS from /etc/netinject/glean.env), made from glean 1.25.1's own unit
files as its glean-install writes them; at a first boot where the agent installed the
config it writes that file (glean's documented --skip-network), where it steps aside it
removes it; glean's own argument parser takes the value; uninstall removes all of it.
That systemd and glean act on it is checked in a real boot (test_e2e_peers: the
inject-glean image)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers.guest import (
    BUNDLE,
    GUEST_PYTHON,
    agent_log,
    boot_as_new_instance_with_foreign_drive,
    instance_doc,
    make_drive,
    make_guest,
    run_agent,
)
from netinject.guest.image import glean_dropin, uninstall_agent
from netinject.vm.image import glean_wheel

ENV = "etc/netinject/glean.env"
SCRIPTS = "/usr/local/lib/python3.11/dist-packages/glean/init"  # as glean-install writes it
UUID_B = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
UUID_C = "5b6c7d8e-9fa0-4b1c-8d2e-3f4a5b6c7d8e"


def _wheel() -> Path:
    return glean_wheel(lambda _m: None)


def glean_unit(name: str, extra: str = "") -> str:
    """One of glean 1.25.1's unit files as its glean-install writes it (the template's
    %%GLEAN_SCRIPTS_DIR%% and %%EXTRA_ARGS%% replaced: glean/install.py)."""
    with zipfile.ZipFile(_wheel()) as whl:
        text = whl.read(f"glean/init/{name}").decode()
    return text.replace("%%GLEAN_SCRIPTS_DIR%%", SCRIPTS).replace("%%EXTRA_ARGS%%", extra)


def _glean_image(tmp: Path, doc: object, extra: str = "") -> Path:
    root = make_guest(tmp / "root", doc, make_drive(tmp / "a.img", doc))
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for unit in ("glean@.service", "glean-early.service"):
        (units / unit).write_text(glean_unit(unit, extra))
    (root / "lib/systemd").mkdir(parents=True)
    (root / "lib/systemd/systemd").write_bytes(b"\x7fELF systemd")
    os.symlink("/lib/systemd/systemd", root / "sbin/init")
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", str(BUNDLE), "install", "--root",
                           str(root)], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "glean runs after the agent" in done.stdout, done.stdout
    return root


def _glean_parses(args: list[str]) -> bool:
    """glean's own argument parser (glean.cmd, from the wheel) on the arguments its unit
    would pass: whether it reads them as --skip-network."""
    code = ("import sys\nsys.path.insert(0, sys.argv[1])\n"
            "import argparse, glean.cmd as c\n"
            "seen = {}\n"
            "real = argparse.ArgumentParser.parse_args\n"
            "def grab(self, a=None, ns=None):\n"
            "    ns = real(self, a, ns); seen['ns'] = ns; raise SystemExit(0)\n"
            "argparse.ArgumentParser.parse_args = grab\n"
            "try:\n    c.main(sys.argv[2:])\nexcept SystemExit:\n    pass\n"
            "print(seen['ns'].skip, seen['ns'].interface)\n")
    done = subprocess.run([sys.executable, "-c", code, str(_wheel()), *args],
                          capture_output=True, text=True, check=True, timeout=60)
    skip, _iface = done.stdout.split()
    return skip == "True"


@pytest.mark.parametrize("extra", ["", "--no-dhcp-fallback"])
def test_install_extends_gleans_units_and_systemd_reads_the_drop_in(
        tmp_path: Path, extra: str) -> None:
    root = _glean_image(tmp_path, instance_doc(), extra)
    dropin = root / "etc/systemd/system/glean@.service.d/50-netinject.conf"
    text = dropin.read_text()
    assert "After=netinject.service\n" in text
    assert f"EnvironmentFile=-/{ENV}\n" in text
    # The whole ExecStartPre list reset and given again, glean's line extended.
    assert f"ExecStartPre=\nExecStartPre={SCRIPTS}/python-glean {extra} ${{ARGS}} " \
           "$NETINJECT_GLEAN_ARGS\n" in text
    assert "ExecStart=/sbin/ifup" not in text  # (the other directive left alone)
    assert not (root / "etc/systemd/system/glean-networkd.service.d").exists()


def test_a_first_boot_turns_gleans_network_part_off_and_stepping_aside_on(
        tmp_path: Path) -> None:
    doc = instance_doc()
    root = _glean_image(tmp_path, doc)
    assert not (root / ENV).exists()
    assert run_agent(root).returncode == 0
    assert "outcome=installed" in agent_log(root)
    text = (root / ENV).read_text()
    assert doc["instance"]["uuid"] in text
    assert text.endswith("\nNETINJECT_GLEAN_ARGS=--skip-network\n")
    assert "glean's network config turned off for this instance" in agent_log(root)
    value = text.rsplit("=", 1)[1].split()
    assert _glean_parses(["--interface", "eth0", *value])
    assert not _glean_parses(["--interface", "eth0"])
    # A later boot of the same instance keeps it.
    assert run_agent(root).returncode == 0
    assert (root / ENV).read_text() == text
    # A new instance made from this image, given another instance's drive: glean again.
    boot_as_new_instance_with_foreign_drive(root, UUID_C, UUID_B)
    assert run_agent(root).returncode == 0
    assert "outcome=stepped-aside" in agent_log(root).splitlines()[-1]
    assert not (root / ENV).exists()
    assert "glean's network config is on again" in agent_log(root)


def test_uninstall_removes_the_drop_in_and_the_switch(tmp_path: Path) -> None:
    root = _glean_image(tmp_path, instance_doc())
    assert run_agent(root).returncode == 0
    said: list[str] = []
    assert uninstall_agent(str(root), said.append) == 0
    assert "removed /etc/systemd/system/glean@.service.d/50-netinject.conf" in said
    assert f"removed /{ENV}" in said
    assert not (root / "etc/systemd/system/glean@.service.d").exists()


def test_each_of_gleans_units_gets_its_drop_in() -> None:
    """glean-install's NetworkManager and networkd units too: the line that runs
    python-glean, wherever it is (ExecStartPre or ExecStart), gets the variable."""
    nm = glean_dropin(glean_unit("glean-nm@.service"))
    networkd = glean_dropin(glean_unit("glean-networkd.service"))
    assert nm is not None
    assert networkd is not None
    assert f"ExecStart=\nExecStart={SCRIPTS}/python-glean --use-nm --debug  $ARGS " \
           "$NETINJECT_GLEAN_ARGS\n" in nm
    assert f"ExecStart=\nExecStart={SCRIPTS}/python-glean --distro networkd " \
           "$NETINJECT_GLEAN_ARGS\n" in networkd


@pytest.mark.parametrize("unit", [
    "[Service]\nExecStart=/sbin/ifup %I\n",  # no python-glean
    "[Service]\nExecStartPre=/x/python-glean a\nExecStart=/x/python-glean b\n",  # two
    "[Service]\nExecStartPre=/x/python-glean \\\n  --ssh\n",  # a continuation
    "[Service]\nExecStartPre=/x/python-glean \u00e9\n",  # not ASCII
])
def test_a_unit_this_installer_cannot_follow_is_left_alone(unit: str) -> None:
    assert glean_dropin(unit) is None
