"""Shared test helpers: exact file-set comparisons and running the real CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

CASES = Path(__file__).parent / "cases"
FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root, by relative path, with its exact bytes."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def load_case(name: str) -> Any:
    return json.loads((CASES / name / "instance.json").read_text())


def ifup_no_act(interfaces: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    """Parse an ENI file with the real ifupdown: ``ifup --no-act -i FILE -a``.

    ifupdown prints the commands it would run on stderr; both streams land in stdout.
    """
    ifup = shutil.which("ifup") or "/sbin/ifup"
    return subprocess.run(
        [ifup, "--no-act", "-i", str(interfaces), "-a", "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30, check=False)


@pytest.fixture
def write_json(tmp_path: Path) -> Any:
    def _write(doc: Any, name: str = "instance.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(doc))
        return path
    return _write
