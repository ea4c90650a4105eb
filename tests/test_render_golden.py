"""Golden trees: input fixture -> exact file set and exact bytes (netplan style)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import CASES, FIXTURES, tree
from netinject.cli import main

INSTANCE_CASES = ["seed", "multi-nic-reordered", "dual-stack", "no-gateway"]


@pytest.mark.parametrize("case", INSTANCE_CASES)
def test_instance_document_renders_exact_tree(case: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sysmeta = tmp_path / "sysmeta.json"
    rc = main(["render", str(CASES / case / "instance.json"), "--out", str(out),
               "--system-metadata-out", str(sysmeta)])
    assert rc == 0
    assert tree(out) == tree(CASES / case / "expected")
    assert json.loads(sysmeta.read_text()) == json.loads(
        (CASES / case / "system_metadata.out.json").read_text())


def test_network_data_renders_exact_tree(tmp_path: Path) -> None:
    case = CASES / "network-data"
    out = tmp_path / "out"
    rc = main(["render", "--network-data", str(case / "network_data.json"),
               "--meta-data", str(case / "meta_data.json"), "--out", str(out)])
    assert rc == 0
    assert tree(out) == tree(case / "expected")


def _collapse(text: str) -> str:
    return "\n".join(re.sub(r"\s+", " ", line).strip() for line in text.splitlines())


def test_seed_style_reproduces_the_seed_interfaces_file(tmp_path: Path) -> None:
    """The golden case of the issue: the seed's exact /etc/network/interfaces."""
    out = tmp_path / "out"
    assert main(["render", str(CASES / "seed" / "instance.json"), "--style", "seed",
                 "--format", "eni", "--out", str(out)]) == 0
    rendered = (out / "etc/network/interfaces").read_text()
    seed = (FIXTURES / "seed_interfaces.txt").read_text()
    assert _collapse(rendered) == _collapse(seed)
    assert tree(out) == {"etc/network/interfaces":
                         (CASES / "seed/expected-seed/etc/network/interfaces").read_bytes()}


def test_format_selection_renders_only_those(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["render", str(CASES / "multi-nic-reordered" / "instance.json"),
                 "--format", "udev,hostname", "--out", str(out)]) == 0
    assert sorted(tree(out)) == ["etc/hostname", "etc/udev/rules.d/70-persistent-net.rules"]


def test_print_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["render", str(CASES / "seed" / "instance.json"), "--print",
                 "--out", str(out)]) == 0
    assert not out.exists()
    shown = capsys.readouterr().out
    assert "==> etc/network/interfaces <==" in shown
    assert "address 10.180.81.249" in shown


def test_more_than_three_dns_servers_warns(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(CASES / "no-gateway" / "instance.json"),
                 "--out", str(tmp_path / "o")]) == 0
    assert "glibc reads only the first 3" in capsys.readouterr().err
