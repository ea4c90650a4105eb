"""Reading input documents: JSON files, and an instance from either input form.

Every failure (no such file, a directory, bad UTF-8, bad JSON, nesting too deep, an
integer too long to convert) becomes an InvalidInput naming the file, so callers only
ever see the domain errors (exit 2), never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import MISSING, FieldError, InvalidInput, UsageError
from ..model import Instance
from . import network_data as nd_source
from . import neutron


def read_json(path: Path) -> Any:
    """Read a JSON file. Anything that is not a readable JSON document (a directory, bad
    UTF-8, a syntax error, nesting too deep, an integer too long to convert) becomes an
    InvalidInput naming the file; nothing here raises anything else."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput([FieldError("", MISSING, f"is not UTF-8 text ({exc.reason})")],
                           str(path)) from None
    except FileNotFoundError:
        raise InvalidInput([FieldError("", MISSING, "no such file")], str(path)) from None
    except IsADirectoryError:
        raise InvalidInput([FieldError("", MISSING, "is a directory, not a JSON file")],
                           str(path)) from None
    except OSError as exc:
        raise InvalidInput([FieldError("", MISSING, f"cannot be read ({exc.strerror})")],
                           str(path)) from None
    return parse_json(text, str(path))


def parse_json(text: str, source: str = "") -> Any:
    """json.loads with every failure as an InvalidInput (exit 2), never a traceback."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput([FieldError(
            "", MISSING, f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        )], source) from None
    except RecursionError:
        raise InvalidInput([FieldError("", MISSING, "is not usable JSON: nested too deeply")],
                           source) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise InvalidInput([FieldError("", MISSING, f"is not usable JSON: {exc}")],
                           source) from None


def load_instance(instance: Path | None, network_data: Path | None = None,
                  meta_data: Path | None = None) -> tuple[Instance, dict[str, str] | None]:
    """The validated instance from either input form (an instance document, or nova's
    network_data.json with an optional meta_data.json), and its updated system metadata
    (None for network_data.json, which has none)."""
    if network_data is not None:
        if instance is not None:
            raise UsageError("give either INSTANCE.json or --network-data, not both")
        nd = read_json(network_data)
        md = read_json(meta_data) if meta_data is not None else None
        return nd_source.parse(nd, md, source=str(network_data)), None
    if meta_data is not None:
        raise UsageError("--meta-data goes with --network-data")
    if instance is None:
        raise UsageError("give INSTANCE.json, --network-data FILE, or --cloud NAME --server ID")
    loaded = neutron.parse_document(read_json(instance), source=str(instance))
    return loaded.instance, dict(loaded.system_metadata)
