"""The files vm/image.py puts into guest images: shipped as package data
(netinject/vm/files/), and byte for byte what the images were built from before they
moved out of image.py's strings, so every variant's cache key is unchanged.

A change to one of these files changes the cache key of every variant that carries it
(each is rebuilt on its next use): update the golden sha256 here only for a deliberate
change of the guest images (the last: the report's os-release and interfaces-d sections,
for the release and glean boots)."""

from __future__ import annotations

import fnmatch
import hashlib
import subprocess
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from netinject.vm import image

ROOT = Path(__file__).parent.parent

# sha256 of each content variant_files() draws from image.py's own text: the package-data
# files by name, and the few literals image.py keeps inline.
SHA256 = {
    "interfaces.dhcp": "ba866b0ca87c9d41fff897728088013dce0ec164817b2b44aefdbab5b01a3908",
    "99-dhcp.network": "9979418ffbe8e7a53baeb93540d63ac22f02802d8eea2b656c97d3572c567ffd",
    "50-cloud-init.yaml": "03351582e9fc9595056cbabd24fa1a6fd578949be6567504c642ae6d8bbba730",
    "interfaces.cloud-init": "357f639430482a394d16df07a6e79846ca5ec9d537ca0560b7492629de60372f",
    "99-netinject-bench.cfg": "b60d806ce93c12db2130c07986d5c0916953eb0cf69f721d97c01a51fcdc8532",
    "interfaces.glean": "fe8454661944d682e1fa3878cd6c6c0f891ba9091d7f3d11ee5b00999e4f8d8b",
    "netinject-report.sh": "377244f205cdf230e76cf62fa1b568617af907987563b20fb54482cc674631e2",
    "netinject-report.service":
        "48d2a203356c4bc40cc58bc61d1d797a36d3e3e05cc2aeb6850c6f5f092c98f4",
    "bootchart.conf": "035841f5550d3800d0981e21d17b51c0004fd298214730285c11e162d3d22cc5",
    "empty": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "hostname": "53ad2edfc7474c3122e601b9f23fca705eae85b405c7c52b9b53d400618a9bd4",
    "hosts": "12ff335d2ef83281be2f0bd1d64796ee3c16470ccd9fed3b0cc3ce4f6c4def22",
    "fstab": "ab2f595fcae2df9e5f5a45ad974d1c18ea50da2e66a6b78c866835088f7352b6",
    "glean-version": "a7fed7d975149305a94b9f4f67a1586b69f8ec9bdb4f541b10f40d451657807e",
    "99-cloud-init-hotplug.cfg":
        "43b38e2d4848409ab186fdcb15b23fb0ee326a450ac4fb9ea36e742dba139655",
}
# Contents made elsewhere, not pinned here: the baked variants' config rendered by
# netinject's own renderers (their golden tests pin the renderers), and the agent's
# marker (the sha256 of the agent, launcher and installer: it changes with the agent).
RENDERED = "rendered"
AGENT = "agent"

# Variant -> path -> (mode, content): the golden file set of every variant.
COMMON = {
    "etc/fstab": (0o644, "fstab"),
    "etc/hosts": (0o644, "hosts"),
    "etc/cloud/cloud-init.disabled": (0o644, "empty"),
    "usr/local/sbin/netinject-report": (0o755, "netinject-report.sh"),
    "etc/systemd/system/netinject-report.service": (0o644, "netinject-report.service"),
    "etc/systemd/bootchart.conf": (0o644, "bootchart.conf"),
}
STOCK = {**COMMON, "etc/hostname": (0o644, "hostname")}
BAKED = {**COMMON, "etc/hostname": (0o644, RENDERED), "etc/resolv.conf": (0o644, RENDERED),
         "etc/udev/rules.d/70-persistent-net.rules": (0o644, RENDERED)}
ENI_DHCP = {"etc/network/interfaces": (0o644, "interfaces.dhcp")}
NETWORKD_DHCP = {"etc/systemd/network/99-dhcp.network": (0o644, "99-dhcp.network")}
NETPLAN_DHCP = {"etc/netplan/50-cloud-init.yaml": (0o600, "50-cloud-init.yaml")}
AGENT_MARKER = {"usr/lib/netinject/.agent-sha256": (0o644, AGENT)}
GOLDEN: dict[str, dict[str, tuple[int, str]]] = {
    "dhcp": {**STOCK, **ENI_DHCP},
    "baked-static": {**BAKED, "etc/network/interfaces": (0o644, RENDERED)},
    "inject": {**STOCK, **ENI_DHCP, **AGENT_MARKER},
    "cloud-init": {
        **{p: v for p, v in STOCK.items() if p != "etc/cloud/cloud-init.disabled"},
        "etc/network/interfaces": (0o644, "interfaces.cloud-init"),
        "etc/cloud/cloud.cfg.d/99-netinject-bench.cfg": (0o644, "99-netinject-bench.cfg"),
    },
    "inject-cloud-init": {  # (cloud-init kept beside the agent)
        **{p: v for p, v in STOCK.items() if p != "etc/cloud/cloud-init.disabled"},
        "etc/network/interfaces": (0o644, "interfaces.cloud-init"),
        "etc/cloud/cloud.cfg.d/99-netinject-bench.cfg": (0o644, "99-netinject-bench.cfg"),
        **AGENT_MARKER,
    },
    "cloud-init-hotplug": {  # (the hot-plug peer: nova's metadata API, hotplug on)
        **{p: v for p, v in STOCK.items() if p != "etc/cloud/cloud-init.disabled"},
        "etc/network/interfaces": (0o644, "interfaces.cloud-init"),
        "etc/cloud/cloud.cfg.d/99-cloud-init-hotplug.cfg": (0o644,
                                                            "99-cloud-init-hotplug.cfg"),
    },
    "glean": {**STOCK, "etc/network/interfaces": (0o644, "interfaces.glean"),
              "usr/local/share/netinject-glean-version": (0o644, "glean-version")},
    "inject-glean": {**STOCK, "etc/network/interfaces": (0o644, "interfaces.glean"),
                     "usr/local/share/netinject-glean-version": (0o644, "glean-version"),
                     **AGENT_MARKER},
    "networkd": {**STOCK, **NETWORKD_DHCP},
    "baked-networkd": {**BAKED,
                       "etc/systemd/network/10-netinject-eth0.link": (0o644, RENDERED),
                       "etc/systemd/network/10-netinject-eth0.network": (0o644, RENDERED)},
    "inject-networkd": {**STOCK, **NETWORKD_DHCP, **AGENT_MARKER},
    "netplan": {**STOCK, **NETPLAN_DHCP},
    "baked-netplan": {**BAKED, "etc/netplan/90-netinject.yaml": (0o600, RENDERED),
                      "etc/systemd/network/10-netplan-eth0.network.d/90-netinject.conf":
                      (0o644, RENDERED)},
    "inject-netplan": {**STOCK, **NETPLAN_DHCP, **AGENT_MARKER},
    "nm": STOCK,
    "baked-nm": {**BAKED, "etc/NetworkManager/system-connections/netinject-eth0.nmconnection":
                 (0o600, RENDERED)},
    "inject-nm": {**STOCK, **AGENT_MARKER},
}


def _shipped() -> set[str]:
    return {f.name for f in (resources.files("netinject.vm") / "files").iterdir()}


def test_every_data_file_is_present_and_nothing_else() -> None:
    assert _shipped() == set(image.DATA_FILES)
    for name in image.DATA_FILES:
        assert image.data_file(name), name


def test_every_data_file_is_package_data_in_pyproject() -> None:
    """A wheel carries the files: pyproject's package-data patterns for netinject.vm
    name each of them (the installed-wheel check is in the commit that moved them)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["netinject.vm"]
    for name in image.DATA_FILES:
        assert any(fnmatch.fnmatch(f"files/{name}", p) for p in patterns), name


def test_data_files_are_the_exact_bytes_of_before() -> None:
    for name in image.DATA_FILES:
        assert hashlib.sha256(image.data_file(name)).hexdigest() == SHA256[name], name


def test_every_variant_is_golden() -> None:
    assert set(GOLDEN) == set(image.VARIANTS)


@pytest.mark.parametrize("variant", sorted(image.VARIANTS))
def test_variant_files_are_byte_for_byte_unchanged(variant: str) -> None:
    files = image.variant_files(variant)
    golden = GOLDEN[variant]
    assert sorted(files) == sorted(golden)
    for path, (content, mode) in files.items():
        want_mode, want = golden[path]
        assert (path, oct(mode)) == (path, oct(want_mode))
        if want in (RENDERED, AGENT):
            assert content, path
        else:
            assert (path, hashlib.sha256(content).hexdigest()) == (path, SHA256[want])


def test_every_data_file_is_used_by_some_variant() -> None:
    used = {content for name in image.VARIANTS
            for content, _ in image.variant_files(name).values()}
    for name in image.DATA_FILES:
        assert image.data_file(name) in used, name


def test_the_former_names_are_the_files_texts() -> None:
    """Tests and tools import the texts by their names of when they were strings."""
    for attr, name in (("DHCP_ENI", "interfaces.dhcp"), ("NETWORKD_DHCP", "99-dhcp.network"),
                       ("NETPLAN_DHCP", "50-cloud-init.yaml"),
                       ("CLOUD_INIT_ENI", "interfaces.cloud-init"),
                       ("CLOUD_INIT_CFG", "99-netinject-bench.cfg"),
                       ("GLEAN_ENI", "interfaces.glean"),
                       ("REPORT_SCRIPT", "netinject-report.sh"),
                       ("REPORT_UNIT", "netinject-report.service"),
                       ("BOOTCHART_CONF", "bootchart.conf")):
        assert getattr(image, attr).encode() == image.data_file(name), attr


def test_report_script_parses_as_posix_sh() -> None:
    done = subprocess.run(["sh", "-n", "-"], input=image.data_file("netinject-report.sh"),
                          capture_output=True, check=False)
    assert done.returncode == 0, done.stderr


def test_report_script_passes_shellcheck() -> None:
    """All of shellcheck's checks but one: SC2012 (ls instead of find) is about names
    that are not bootchart's own bootchart-<date>-<time>.svg, and silencing it in the
    script would change its bytes (every image's cache key)."""
    script = resources.files("netinject.vm") / "files" / "netinject-report.sh"
    with resources.as_file(script) as path:
        done = subprocess.run(["shellcheck", "--shell=sh", "--exclude=SC2012", str(path)],
                              capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout
