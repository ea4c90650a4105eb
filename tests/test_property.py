"""Property: arbitrary input either renders files that ifupdown parses, or is rejected
with an error; never a crash, never a half-written tree."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ifup_no_act, load_case, tree
from netinject.cli import main

NASTY = st.sampled_from([
    "", " ", "\n", "; reboot", "&& rm -rf /", "$(id)", "`id`", "10.0.0.1\nup reboot",
    "fa:16:3e:00:00:01\n", "eth0", "../../etc/passwd", "0.0.0.0/0", "::/0", "1e3", "\x00",
    "192.0.2.1 # x", "fe80::1%eth0", "2001:db8::/129", "999.1.1.1", "web-1.", "a" * 300,
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), NASTY,
    st.text(max_size=20),
    st.ip_addresses().map(str),
    st.builds(lambda ip, n: f"{ip}/{n}", st.ip_addresses(v=4), st.integers(0, 32)),
    st.from_regex(r"\A[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z"),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.sampled_from(["destination", "nexthop", "subnet_id",
                                                    "ip_address"]), SCALARS, max_size=2))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


BASES = {name: load_case(name) for name in ("seed", "multi-nic-reordered", "dual-stack")}


@st.composite
def documents(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(BASES[draw(st.sampled_from(sorted(BASES)))])
    paths = _paths(doc)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths))
        node = doc
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = draw(VALUES)
        except (KeyError, IndexError, TypeError):
            continue
    return doc


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=documents(), style=st.sampled_from(["default", "seed"]))
def test_arbitrary_input_renders_parseable_eni_or_is_rejected(doc: Any, style: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "in.json"
        src.write_text(json.dumps(doc))
        out = root / "out"
        rc = main(["render", str(src), "--style", style, "--out", str(out)])
        assert rc in (0, 2)
        if rc == 2:
            assert tree(out) == {}
            return
        files = tree(out)
        assert "etc/network/interfaces" in files
        result = ifup_no_act(out / "etc/network/interfaces", root)
        assert result.returncode == 0, result.stdout
        for content in files.values():
            assert b"\x00" not in content


def test_agent_makedirs_and_predicates(tmp_path: Path) -> None:
    import pytest

    from netinject.guest import paths as agent

    deep = str(tmp_path / "a" / "b" / "c")
    agent.makedirs(deep, 0o700)
    agent.makedirs(deep)  # exists: fine
    assert agent.isdir(deep)
    assert not agent.isfile(deep)
    assert agent.exists(deep)
    (tmp_path / "f").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert agent.isfile(str(tmp_path / "f"))
    assert agent.islink(str(tmp_path / "dangling"))
    assert agent.lexists(str(tmp_path / "dangling"))
    assert not agent.exists(str(tmp_path / "dangling"))
    with pytest.raises(NotADirectoryError):
        agent.makedirs(str(tmp_path / "f" / "sub"))
    with pytest.raises(FileExistsError):
        agent.makedirs(str(tmp_path / "f"))
    assert agent.relative_to("/", "/dev/vdb") == "dev/vdb"
    assert agent.relative_to("/x/root/", "/x/root/dev/vdb") == "dev/vdb"
    assert agent.relative_to("/x/root", "/elsewhere/img") == "elsewhere/img"
