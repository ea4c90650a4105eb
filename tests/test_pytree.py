"""The mirrors of another release are this machine's apt sources with its suite renamed,
read from one-line and deb822 files alike; other suites (third-party) are left out."""

from __future__ import annotations

from pathlib import Path

import pytest

from netinject.vm import apt, pytree


def test_release_sources_rename_the_suites_of_both_formats(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = tmp_path / "a.list"
    listed.write_text("# comment\ndeb http://mirror.test/debian bookworm main contrib\n"
                      "deb-src http://mirror.test/debian bookworm main\n"
                      "deb [arch=amd64] http://other.test/apt cloud-sdk-bookworm main\n")
    sources = tmp_path / "b.sources"
    sources.write_text("Types: deb\n# note\nURIs: http://mirror.test/debian\n"
                       "Suites: bookworm-updates\nComponents: main\n"
                       "Signed-By: /usr/share/keyrings/k.gpg\n\n"
                       "Types: deb\nURIs: http://mirror.test/debian-security\n"
                       "Suites: bookworm-security\nComponents: main\nEnabled: no\n\n"
                       "Types: deb\nURIs: http://third.test/x\nSuites: nodistro\n"
                       "Components: main\n")
    monkeypatch.setattr(apt, "apt_sources", lambda: [listed, sources])
    assert apt.release_sources("trixie") == [
        "deb http://mirror.test/debian trixie main contrib",
        "deb [signed-by=/usr/share/keyrings/k.gpg] http://mirror.test/debian trixie-updates main",
    ]


def test_the_wrapper_resolves_the_trees_absolute_links_inside_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "lib/x86_64-linux-gnu/ld-2.31.so").write_bytes(b"")
    (root / "lib64").mkdir()
    (root / "lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-2.31.so")
    assert pytree.in_tree(root, pytree.LOADER) == root / "lib/x86_64-linux-gnu/ld-2.31.so"
    assert f"exec '{root}/lib/x86_64-linux-gnu/ld-2.31.so' --library-path" in \
        pytree.wrapper_text(root, "3.9")
