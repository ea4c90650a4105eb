"""The guest agent as shipped: its modules joined into one file, and the bundle.

The agent is a small package (``netinject.guest``: errors, paths, proc, stacks,
contract, log, readers, discovery, install, live, announce, txn, metadata, nics, run) so
it can be read one concern at a time; the guest gets it as ONE module,
``netinject_guest.py``, so boot pays nothing for the split (one file to find, read and
unmarshal). Joining drops each module's imports of its siblings (every top-level name in
the boot modules is unique, which ``join`` checks) and keeps the rest in dependency
order. ``image.py`` (install into an image tree) is not joined: the bundle carries it as
``netinject_guest_image.py`` with its sibling imports pointed at the joined module, and
boot never imports it.

``netinject guest-bundle`` writes a zipapp: ``python3 netinject-guest.pyz install --root
/mnt/image`` installs the boot service; ``... run`` is the boot service itself.
"""

from __future__ import annotations

import ast
import io
import zipfile
from importlib import resources
from pathlib import Path

from .hostio import write_atomic

BOOT_MODULES = ("errors", "paths", "proc", "stacks", "contract", "log", "readers", "discovery",
                "install", "live", "announce", "others", "txn", "metadata", "nics",
                "run")
JOINED_NAME = "netinject_guest"
IMAGE_NAME = "netinject_guest_image"

SHEBANG = b"#!/usr/bin/python3 -IS\n"


class JoinError(Exception):
    """The boot modules cannot be joined (a top-level name defined twice)."""


def module_source(name: str) -> str:
    return resources.files("netinject.guest").joinpath(f"{name}.py").read_text("utf-8")


def _sibling_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    return [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 1]


def _defined(tree: ast.Module) -> dict[str, str]:
    """The top-level names a module binds, each with what it binds: its own definition
    (``def``), or the standard-library object an import binds (two modules importing
    the same object under the same name do not clash; anything else does)."""
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names[node.name] = "def"
        elif isinstance(node, ast.Assign):
            names.update((t.id, "def") for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = "def"
        elif isinstance(node, ast.Import):
            names.update((a.asname or a.name.split(".")[0], f"import {a.name}")
                         for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.update((a.asname or a.name, f"from {node.module} import {a.name}")
                         for a in node.names)
    names.pop("TYPE_CHECKING", None)
    return names


def _without_lines(text: str, nodes: list[ast.ImportFrom]) -> list[str]:
    lines = text.splitlines()
    drop = {i for n in nodes for i in range(n.lineno - 1, (n.end_lineno or n.lineno))}
    return [line for i, line in enumerate(lines) if i not in drop]


def joined_source() -> str:
    """The boot modules as one module (see the module docstring)."""
    owner: dict[str, tuple[str, str]] = {}
    out = ["#!/usr/bin/python3 -IS",
           '"""netinject-guest: netinject\'s guest agent, joined from netinject.guest.{'
           + ",".join(BOOT_MODULES) + '} by netinject guest-bundle. Standard library only, '
           'Python >= 3.9. Read the modules, not this file."""']
    for name in BOOT_MODULES:
        text = module_source(name)
        tree = ast.parse(text)
        for defined, what in _defined(tree).items():
            if defined in owner and (what == "def" or owner[defined][1] != what):
                raise JoinError(f"{defined!r} is defined in both {owner[defined][0]} and "
                                f"{name}")
            owner.setdefault(defined, (name, what))
        out.append(f"\n# ---- {name}.py " + "-" * (70 - len(name)))
        out.extend(_without_lines(text, _sibling_imports(tree)))
    return "\n".join(out) + "\n"


def image_source() -> str:
    """image.py with its sibling imports pointed at the joined module."""
    text = module_source("image")
    tree = ast.parse(text)
    lines = text.splitlines()
    for node in sorted(_sibling_imports(tree), key=lambda n: -n.lineno):
        names = ", ".join(a.name for a in node.names)
        lines[node.lineno - 1:node.end_lineno] = [f"from {JOINED_NAME} import {names}"]
    return "\n".join(lines) + "\n"


def launcher_source() -> bytes:
    return resources.files("netinject.guest").joinpath("launcher.py").read_bytes()


def main_source() -> bytes:
    """The zipapp's __main__.py (guest/zipapp_main.py)."""
    return resources.files("netinject.guest").joinpath("zipapp_main.py").read_bytes()


def agent_source() -> bytes:
    """The joined agent as installed in an image (/usr/lib/netinject/netinject_guest.py)."""
    return joined_source().encode("utf-8")


def build(out: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in (("__main__.py", main_source()), (f"{JOINED_NAME}.py", agent_source()),
                           (f"{IMAGE_NAME}.py", image_source().encode()),
                           ("launcher.py", launcher_source())):
            info = zipfile.ZipInfo(name, date_time=(2010, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    write_atomic(out, SHEBANG + buf.getvalue(), 0o755)
    return out


def write_agent(out: Path) -> Path:
    """The joined agent alone, as a runnable file (``python3 -I -S FILE run ...``)."""
    write_atomic(out, agent_source(), 0o644)
    return out
