"""The shape of the code: no import cycles anywhere in src/ (imports inside functions
included), the CLI imported by nothing, the guest package importing nothing of the
host's, and one renderer registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "netinject").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every netinject module ``name`` imports, anywhere in the file (a submodule named
    in ``from pkg import sub`` counts as that submodule)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = {f"{mod}.{a.name}" for a in node.names} & known
            found.update(subs or {mod})
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append([*stack[stack.index(m):], m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return cycles


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """src/'s import graph, parsed once for this module's tests (they only read it)."""
    return _graph()


def test_no_import_cycles_in_src(graph: dict[str, set[str]]) -> None:
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_nothing_imports_the_cli(graph: dict[str, set[str]]) -> None:
    users = {n for n, deps in graph.items()
             if any(d == "netinject.cli" or d.startswith("netinject.cli.") for d in deps)
             and not n.startswith("netinject.cli") and n != "netinject.__main__"}
    assert users == set()


@pytest.mark.parametrize("name", [n for n in _modules() if n.startswith("netinject.guest.")])
def test_guest_modules_import_only_their_siblings_and_the_stdlib(
        name: str, graph: dict[str, set[str]]) -> None:
    deps = graph[name]
    assert {d for d in deps if not d.startswith("netinject.guest.")} == set()


def test_the_registry_is_every_stacks_renderer_then_the_shared_ones() -> None:
    """The renderers come from the stacks' descriptors: nothing else lists the stacks'
    formats."""
    from netinject import render
    from netinject.guest.stacks import STACKS

    assert list(render.REGISTRY) == [s.format for s in STACKS] + ["udev", "resolv",
                                                                   "hostname"]
    for s in STACKS:
        assert render.REGISTRY[s.format].__module__ == f"netinject.render.{s.format}"


CASES = Path(__file__).parent / "cases"


@pytest.mark.parametrize("stack", ["ifupdown", "networkd", "netplan", "nm"])
def test_what_a_new_stack_must_provide(stack: str) -> None:
    """Adding a network stack is one descriptor (guest/stacks.py, in STACKS), its
    renderer module (render/<format>.py) and its golden files (tests/cases/*/expected):
    everything else (the agent's allowlist and private modes, which files the agent
    installs, detection, the agent's unit ordering, the announcer, hot-plug's bundle,
    the drive, the vendordata answer, the test bed's images) is derived from those.
    This lists what each of the three must hold."""
    from netinject.guest import contract
    from netinject.guest.stacks import STACK_NAMES, STACKS, Stack, stack_named, stack_of
    from netinject.render import REGISTRY, Options, render_all
    from netinject.sources.neutron import parse_document

    s = stack_named(stack)
    # The descriptor: a name (how images record it), a format, its guest paths, the
    # units the agent runs before, and its Debian packages for the test bed.
    assert isinstance(s, Stack)
    assert s in STACKS
    assert contract.is_plain_name(s.name)
    assert STACK_NAMES.count(s.name) == 1
    assert s.files or s.dirs
    assert s.units
    assert all(u.endswith(".service") for u in s.units)
    assert type(s).detect is not Stack.detect  # how to tell an image uses it
    # What it is on each Debian release the test bed builds images of (vm/image.py).
    from netinject.vm.image import RELEASES

    assert sorted(r for r, _ in s.debian_releases) == sorted(RELEASES)
    assert all(note for _, note in s.debian_releases)
    # Its paths are the agent's allowlist and belong to it alone.
    for d, suffixes in s.dirs:
        assert d.startswith("etc/")
        assert d.endswith("/")
        assert suffixes
        assert contract.is_allowed_path(d + "x" + suffixes[0])
    for f in s.files:
        assert contract.is_allowed_path(f)
        assert stack_of(f) is s
    # Files in another program's drop-in directories: allowed, its own, never private
    # (that program may read them as its own user); nothing deeper or beside them.
    for prefix, suffix, file_suffixes in s.dropins:
        d, ext = prefix + "x" + suffix, file_suffixes[0]
        assert contract.is_allowed_path(d + "/y" + ext)
        assert stack_of(d + "/y" + ext) is s
        assert contract.file_mode(d + "/y" + ext) == 0o644
        for bad in (d + "/y", d + "/.y" + ext, d + "/z/y" + ext, prefix + suffix + "/y" + ext,
                    prefix + "../x" + suffix + "/y" + ext):
            assert not contract.is_allowed_path(bad), bad
            assert stack_of(bad) is None, bad
    # The renderer module, registered by the descriptor's format.
    assert s.format in REGISTRY
    # Golden files: every case renders files of this stack, owned by it, with its mode,
    # byte for byte what tests/cases holds (test_render_golden compares the trees).
    for case in sorted(CASES.glob("*/instance.json")):
        files = render_all(parse_document(__import__("json").loads(case.read_text())).instance,
                           (s.format,), Options())
        assert files, case
        for path, text in files.items():
            assert stack_of(str(path)) is s
            expected = case.parent / "expected" / path
            assert expected.read_text() == text, expected
            assert contract.file_mode(str(path)) == (
                0o600 if s.private and s.dropin(str(path)) is None else 0o644)
