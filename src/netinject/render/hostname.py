"""/etc/hostname: the short host name (Debian keeps the domain out of this file)."""

from __future__ import annotations

from pathlib import PurePosixPath

from ..model import Instance
from . import Files, Options

PATH = PurePosixPath("etc/hostname")


def render(instance: Instance, options: Options) -> Files:
    if instance.hostname is None:
        return {}
    return {PATH: instance.hostname.short + "\n"}
