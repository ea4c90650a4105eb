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


def test_a_second_build_waits_for_the_first_then_finds_the_tree_built(
        tmp_path: Path) -> None:
    """scripts/test.sh builds the trees in the background while a test may ask for one:
    the second caller waits on the cache's lock instead of racing the build."""
    import threading

    from netinject.vm.image import cache_lock

    top = tmp_path / f"python-bullseye-{pytree.tree_key('bullseye')}"
    (top / "root").mkdir(parents=True)
    got: list[pytree.PythonTree] = []
    with cache_lock(top):  # "the first build" holds the lock
        t = threading.Thread(target=lambda: got.append(
            pytree.build_python_tree("bullseye", lambda _m: None, tmp_path)))
        t.start()
        t.join(0.5)
        assert t.is_alive()  # waiting, not building
        assert not got
        (top / "done").write_text("built\n")  # the first build ends
    t.join(10)
    assert [g.root for g in got] == [top / "root"]
    assert (top / "python3.9").read_text() == pytree.wrapper_text(top / "root", "3.9")


def test_prewarm_builds_the_bases_then_the_variants_then_what_was_asked() -> None:
    from netinject.vm import image, prewarm

    recipes = list(dict.fromkeys(image.VARIANTS.values()))
    assert recipes[0] == "ifupdown"  # the first tests that boot use it
    ci = [("base", r) for r in recipes] + [
        ("variant", v) for v in (*image.VARIANTS, *prewarm.CI_RELEASE_VARIANTS)]
    assert prewarm.plan(False, False) == ci
    steps = prewarm.plan(True, True)
    assert steps[:len(ci)] == ci
    assert steps[len(ci):len(ci) + 2] == [("python", "bullseye"), ("python", "trixie")]
    rest = steps[len(ci) + 2:]
    assert {n.partition("@")[2] for _k, n in rest} == {"bullseye", "trixie"}
    assert not {n for _k, n in rest} & set(prewarm.CI_RELEASE_VARIANTS)  # not twice
    for _kind, name in steps:
        if _kind == "variant":
            image.parse_variant(name)  # every name is one the image builder knows
