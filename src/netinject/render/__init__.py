"""Renderers: model -> {guest path: file content}.

Each output format is one module with a pure ``render(instance, options)`` function that
returns the files it produces, keyed by their path relative to the guest's root. They
know nothing about where the files end up (a directory, a config drive, a running guest
through qemu-guest-agent): they write nothing (docs/design.md, who writes to disk).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module

from ..guest.stacks import STACKS
from ..model import Instance
from . import hostname, resolv, udev
from .base import Files, Options, Rendered, Renderer, Style

__all__ = ["FORMATS", "REGISTRY", "Files", "Options", "Rendered", "Renderer", "Style", "get",
           "render", "render_all"]

SHARED: dict[str, Renderer] = {
    "udev": udev.render,
    "resolv": resolv.render,
    "hostname": hostname.render,
}
"""The formats every stack uses: NIC names pinned to MACs, the resolver, the hostname."""

STACK_RENDERERS: dict[str, Renderer] = {
    s.format: import_module(f"{__name__}.{s.format}").render for s in STACKS}
"""Each network stack's own files: the module named by its descriptor's ``format``
(guest/stacks.py), so a new stack is its descriptor and a module here. A drive carries
every stack's files; the agent installs its image's."""

REGISTRY: dict[str, Renderer] = {**STACK_RENDERERS, **SHARED}
"""Format name -> renderer, in the order formats are rendered and listed."""
FORMATS: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> Renderer:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r} (known: {', '.join(FORMATS)})") from None


def render(instance: Instance, formats: Iterable[str] = FORMATS,
           options: Options | None = None) -> Rendered:
    """Render every requested format into one result (formats never share a path)."""
    opts = options or Options()
    files: Files = {}
    warnings: list[str] = []
    for name in formats:
        out = get(name)(instance, opts)
        for path, content in out.files.items():
            if path in files:
                raise AssertionError(f"two renderers produce {path}")
            files[path] = content
        warnings.extend(out.warnings)
    return Rendered(files, tuple(warnings))


def render_all(instance: Instance, formats: Iterable[str] = FORMATS,
               options: Options | None = None) -> Files:
    """The files of render() (for callers that show no warnings)."""
    return render(instance, formats, options).files
