"""Package the guest agent as one file an image builder can drop in.

The zipapp holds the agent module (standard library only) and a ``__main__`` that runs
it: ``python3 netinject-guest.pyz install --root /mnt/image`` installs the agent into an
image tree; ``python3 netinject-guest.pyz run`` is the boot service itself. The archive
is reproducible (fixed timestamps and order).
"""

from __future__ import annotations

import io
import zipfile
from importlib import resources
from pathlib import Path

from .hostio import write_atomic

MAIN = b"""import time
started = time.monotonic()
cpu_started = time.process_time()
import sys
import netinject_guest
sys.exit(netinject_guest.main(started=started, cpu_started=cpu_started))
"""
SHEBANG = b"#!/usr/bin/python3 -IS\n"


def agent_source() -> bytes:
    return resources.files("netinject.guest").joinpath("agent.py").read_bytes()


def build(out: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in (("__main__.py", MAIN), ("netinject_guest.py", agent_source())):
            info = zipfile.ZipInfo(name, date_time=(2010, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    write_atomic(out, SHEBANG + buf.getvalue(), 0o755)
    return out
