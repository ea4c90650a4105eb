"""The Debian mirrors this machine's apt uses, for building trees of any release.

mmdebstrap takes the source files as they are for the host's own release (bookworm); for
another release (bullseye, trixie) the same URIs and options get that release's suite
names. Nothing here names a mirror: everything is read from apt's configuration.
"""

from __future__ import annotations

import re
from pathlib import Path

# The host's release, which the sources name; the test-bed images' default release.
SUITE = "bookworm"


def apt_sources() -> list[Path]:
    """The apt source files this machine uses (mmdebstrap takes them as mirrors)."""
    files = [Path("/etc/apt/sources.list")] if Path("/etc/apt/sources.list").is_file() else []
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    return [p for p in files if p.read_text().strip()]


def _deb822(text: str) -> list[dict[str, str]]:
    """The stanzas of a deb822 .sources file (comments dropped, continuations joined)."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    field = ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, field = {}, ""
        elif line[0] in " \t" and field:
            current[field] += "\n" + line.strip()
        elif ":" in line:
            field, _, value = line.partition(":")
            field = field.strip().lower()
            current[field] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def source_entries() -> list[tuple[str, str, str, list[str]]]:
    """(options, URI, suite, components) of every binary source this machine's apt uses,
    one-line (.list) and deb822 (.sources) alike."""
    out: list[tuple[str, str, str, list[str]]] = []
    for path in apt_sources():
        text = path.read_text()
        if path.suffix == ".sources":
            for st in _deb822(text):
                if "deb" not in st.get("types", "").split() \
                        or st.get("enabled", "yes").lower() == "no":
                    continue
                signed = st.get("signed-by", "")
                # A path to a keyring is kept; an inline key block is not (mmdebstrap
                # then uses the host's trusted keys).
                opts = f"[signed-by={signed}]" if signed and "\n" not in signed \
                    and signed.startswith("/") else ""
                for uri in st.get("uris", "").split():
                    for suite in st.get("suites", "").split():
                        out.append((opts, uri, suite, st.get("components", "").split()))
        else:
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                m = re.match(r"deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
                if m:
                    out.append(((m.group(1) or "").strip(), m.group(2), m.group(3),
                                m.group(4).split()))
    return out


def release_sources(release: str) -> list[str]:
    """One-line sources for ``release``: this machine's entries for its own suite
    (bookworm, bookworm-updates, bookworm-security, ...) with the release's name instead.
    Sources of other suites (third-party repositories) are left out."""
    lines = []
    for opts, uri, suite, components in source_entries():
        if suite != SUITE and not suite.startswith(SUITE + "-"):
            continue
        renamed = release + suite[len(SUITE):]
        lines.append(" ".join(x for x in ("deb", opts, uri, renamed, *components) if x))
    return lines
