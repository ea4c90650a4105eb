"""Renderers: model -> {guest path: file content}.

Each output format is one module with a pure ``render(instance, options)`` function that
returns the files it produces, keyed by their path relative to the guest's root. They
know nothing about where the files end up (a directory, a config drive, a running guest
through qemu-guest-agent): one writer per side touches the disk.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..model import Instance

Files = dict[PurePosixPath, str]


class Style(enum.Enum):
    """ENI flavour. ``seed`` reproduces the seed's net-tools/arping lines exactly;
    ``default`` needs only iproute2 (what a minimal Debian image has)."""

    DEFAULT = "default"
    SEED = "seed"


@dataclass(frozen=True)
class Options:
    style: Style = Style.DEFAULT


Renderer = Callable[[Instance, Options], Files]


def _registry() -> dict[str, Renderer]:
    from . import eni, hostname, resolv, udev

    return {
        "eni": eni.render,
        "udev": udev.render,
        "resolv": resolv.render,
        "hostname": hostname.render,
    }


FORMATS: tuple[str, ...] = ("eni", "udev", "resolv", "hostname")


def get(name: str) -> Renderer:
    try:
        return _registry()[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r} (known: {', '.join(FORMATS)})") from None


def render_all(instance: Instance, formats: Iterable[str] = FORMATS,
               options: Options | None = None) -> Files:
    """Render every requested format into one file map (formats never share a path)."""
    opts = options or Options()
    out: Files = {}
    for name in formats:
        for path, content in get(name)(instance, opts).items():
            if path in out:
                raise AssertionError(f"two renderers produce {path}")
            out[path] = content
    return out
