"""Image policy: which instances get static injection.

Only images that carry the agent can use injected files, so injection is opt-in per
image with the property ``support_inject_ip`` (the seed's compatibility rule). Glance
properties reach nova only as system metadata ``image_<key>``, so both forms count.
Every other image keeps the legacy DHCP path.
"""

from __future__ import annotations

from collections.abc import Mapping

PROPERTY = "support_inject_ip"
SYSMETA_KEY = f"image_{PROPERTY}"
_TRUE = {"true", "1", "yes"}


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE


def inject_enabled(image_properties: Mapping[str, str],
                   system_metadata: Mapping[str, str]) -> bool:
    """True when the image property or nova's system-metadata copy of it is true."""
    if PROPERTY in image_properties:
        return is_true(image_properties[PROPERTY])
    return is_true(system_metadata.get(SYSMETA_KEY))
