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


def test_formats_come_from_the_registry() -> None:
    from netinject import render

    assert tuple(render.REGISTRY) == render.FORMATS
    assert set(render.FORMATS) == {"eni", "networkd", "netplan", "nm", "udev", "resolv",
                                   "hostname"}
