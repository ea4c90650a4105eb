"""Next to cloud-init in the same image (guest/others.py): at a first boot where the
agent installed the config, cloud-init's network rendering is off for this instance by
cloud-init's documented switch, read back by Debian's cloud-init's own config reader;
where the agent steps aside (no drive, a drive of another instance), cloud-init does the
networking again; a later boot of the same instance keeps it; uninstall removes it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from helpers.guest import (
    agent_log,
    boot_as_new_instance_with_foreign_drive,
    instance_doc,
    make_drive,
    make_guest,
    run_agent,
)
from netinject.guest.image import uninstall_agent

CLOUD_INIT_PYTHON = "/usr/bin/python3"  # Debian's cloud-init lives in the system Python
SWITCH = "etc/cloud/cloud.cfg.d/99-netinject-network.cfg"
UUID_B = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
UUID_C = "5b6c7d8e-9fa0-4b1c-8d2e-3f4a5b6c7d8e"


def _cloud_init_network_disabled(root: Path) -> bool:
    """What cloud-init 22.4 itself makes of /etc/cloud/cloud.cfg + cloud.cfg.d: its
    merged system config, and whether its network key disables networking."""
    code = ("import json,sys\n"
            "from cloudinit import util, net\n"
            "cfg = util.read_conf_with_confd(sys.argv[1])\n"
            "print(json.dumps(net.is_disabled_cfg(cfg.get('network'))))\n")
    done = subprocess.run([CLOUD_INIT_PYTHON, "-c", code, str(root / "etc/cloud/cloud.cfg")],
                          capture_output=True, text=True, check=True, timeout=60)
    disabled: bool = json.loads(done.stdout)
    return disabled


def _image_with_cloud_init(tmp: Path, doc: object) -> Path:
    root = make_guest(tmp / "root", doc, make_drive(tmp / "a.img", doc))
    (root / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    # As Debian ships it: a system config with no network key, and a datasource list.
    (root / "etc/cloud/cloud.cfg").write_text("datasource_list: [ ConfigDrive, None ]\n"
                                              "users: [default]\n")
    (root / "etc/cloud/cloud.cfg.d/90_dpkg.cfg").write_text(
        "datasource_list: [ ConfigDrive, OpenStack, None ]\n")
    return root


def test_an_injected_first_boot_turns_cloud_inits_networking_off(tmp_path: Path) -> None:
    doc = instance_doc()
    root = _image_with_cloud_init(tmp_path, doc)
    assert not _cloud_init_network_disabled(root)
    assert run_agent(root).returncode == 0
    assert "outcome=installed" in agent_log(root)
    text = (root / SWITCH).read_text()
    assert text.endswith("network: {config: disabled}\n")
    assert doc["instance"]["uuid"] in text
    assert (root / SWITCH).stat().st_mode & 0o777 == 0o644
    assert _cloud_init_network_disabled(root)
    assert "cloud-init's network config turned off for this instance" in agent_log(root)
    # A later boot of the same instance keeps it.
    assert run_agent(root).returncode == 0
    assert (root / SWITCH).read_text() == text
    # netinject-guest uninstall (and so the .deb's removal) takes it away.
    said: list[str] = []
    assert uninstall_agent(str(root), said.append) == 0
    assert f"removed /{SWITCH}" in said
    assert not _cloud_init_network_disabled(root)


def test_where_the_agent_steps_aside_cloud_init_networks_again(tmp_path: Path) -> None:
    """An image made from an injected instance (the switch in it) boots as a new instance
    whose drive is another instance's (not trusted), then with no drive at all: the
    switch goes, cloud-init renders the network as without netinject."""
    doc = instance_doc()
    root = _image_with_cloud_init(tmp_path, doc)
    assert run_agent(root).returncode == 0
    assert _cloud_init_network_disabled(root)
    # A new instance (its SMBIOS uuid) given a drive of yet another instance.
    boot_as_new_instance_with_foreign_drive(root, UUID_C, UUID_B)
    assert run_agent(root).returncode == 0
    assert "outcome=stepped-aside" in agent_log(root).splitlines()[-1]
    assert not (root / SWITCH).exists()
    assert not _cloud_init_network_disabled(root)
    assert "cloud-init's network config is on again" in agent_log(root)
    (root / "dev/vdb").unlink()
    assert run_agent(root).returncode == 0
    assert not (root / SWITCH).exists()


def test_an_image_without_cloud_init_gets_no_switch(tmp_path: Path) -> None:
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "a.img", doc))
    assert run_agent(root).returncode == 0
    assert "outcome=installed" in agent_log(root)
    assert not (root / "etc/cloud").exists()


def test_a_symlinked_cloud_dir_is_not_written_through(tmp_path: Path) -> None:
    """/etc/cloud/cloud.cfg.d a link out of the tree: nothing written there; the config
    is installed all the same and the log says why cloud-init was not switched."""
    doc = instance_doc()
    root = make_guest(tmp_path / "root", doc, make_drive(tmp_path / "a.img", doc))
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "etc/cloud").mkdir()
    os.symlink(outside, root / "etc/cloud/cloud.cfg.d")
    assert run_agent(root).returncode == 0
    assert "outcome=installed" in agent_log(root)
    assert list(outside.iterdir()) == []
    assert "could not turn cloud-init's network config off" in agent_log(root)
