"""Small statistics and formatting helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def median(values: Sequence[float | None]) -> float | None:
    """The median of the figures a boot gave (None: it did not show that figure), or
    None when no boot gave one: a failed boot must not count as zero."""
    ok = [v for v in values if v is not None]
    return statistics.median(ok) if ok else None


def fmt(v: float | None) -> str:
    """A figure to one decimal, or "-" when there is none (the tables' blank)."""
    return f"{v:.1f}" if v is not None else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(out)


def utc_now() -> str:
    """Now, UTC, as the benchmarks' JSON dates it."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
