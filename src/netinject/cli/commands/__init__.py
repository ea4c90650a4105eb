"""One module per command; each has ``register(subparsers)`` and the function it runs.

Commands import the library, never the CLI package itself (no import cycles)."""

from __future__ import annotations

from . import bench, demo, drive, guest_bundle, hotplug, image, render, sync, vendordata

COMMANDS = (render, drive, vendordata, guest_bundle, hotplug, sync, image, bench, demo)
