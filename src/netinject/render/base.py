"""What every renderer shares: the options it takes and what it returns."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Rendered:
    """What a renderer produces: files by guest path, and warnings for the user (things
    that are valid but will not do what one may expect)."""

    files: Files = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


Renderer = Callable[[Instance, Options], Rendered]
