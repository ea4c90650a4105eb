"""/etc/hostname: the short host name (Debian keeps the domain out of this file)."""

from __future__ import annotations

from pathlib import PurePosixPath

from ..model import Instance
from .base import Options, Rendered

PATH = PurePosixPath("etc/hostname")


def render(instance: Instance, options: Options) -> Rendered:
    if instance.hostname is None:
        return Rendered()
    return Rendered({PATH: instance.hostname.short + "\n"})
