"""Domain errors.

Validation never stops at the first problem: parsers collect a :class:`FieldError` for
every bad field (with its path in the input document and the offending value) and raise
them together as :class:`InvalidInput`, so one run reports everything a user must fix.
Only the CLI turns these into messages and exit codes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class NetinjectError(Exception):
    """Base class of every error netinject raises on purpose."""


class UsageError(NetinjectError):
    """Wrong combination of command-line options (exit 2)."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of an input document."""

    path: str
    value: object
    message: str

    def __str__(self) -> str:
        where = self.path or "<document>"
        if self.value is _MISSING:
            return f"{where}: {self.message}"
        return f"{where}: {quote(self.value)} {self.message}"


QUOTE_MAX = 200


def quote(value: object) -> str:
    """repr() of a bad value for a message: shortened past QUOTE_MAX characters, and
    safe for values nested too deeply to repr."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply to show>"
    if len(text) > QUOTE_MAX:
        text = f"{text[:QUOTE_MAX - 20]}...<{len(text)} characters>"
    return text


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
MISSING: object = _MISSING
"""Marker for FieldError.value when the field is absent (nothing to quote)."""


class InvalidInput(NetinjectError):
    """Input failed validation; ``errors`` holds every problem found."""

    def __init__(self, errors: list[FieldError], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(f"{head}{len(self.errors)} error(s):\n" + "\n".join(
            f"  {e}" for e in self.errors))


@dataclass
class ErrorCollector:
    """Accumulates FieldErrors while a parser walks a document."""

    errors: list[FieldError] = field(default_factory=list)

    def add(self, path: str, value: object, message: str) -> None:
        self.errors.append(FieldError(path, value, message))

    def missing(self, path: str) -> None:
        self.errors.append(FieldError(path, MISSING, "is required but missing"))

    def raise_if_any(self, source: str = "") -> None:
        if self.errors:
            raise InvalidInput(self.errors, source)

    @contextmanager
    def catching(self) -> Iterator[None]:
        """Fold an InvalidInput raised inside the block into this collector."""
        try:
            yield
        except InvalidInput as exc:
            self.errors.extend(exc.errors)
