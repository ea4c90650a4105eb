"""The guest agent as a Debian package (``netinject guest-bundle --deb OUT``).

The package ships the bundle (the zipapp ``netinject guest-bundle`` writes) as one file,
``/usr/share/netinject-guest/netinject-guest.pyz``, and its maintainer scripts run the
bundle's own installer, so the package installs exactly what ``python3
netinject-guest.pyz install --root IMAGE`` installs, by the same code, and removes it by
``uninstall``:

* ``postinst configure``: ``install --root /`` (the agent, its launcher, the systemd unit
  and the init script for images without systemd, the image's stack record). Nothing is
  started: the agent does its work at an instance's first boot.
* ``prerm remove``: ``uninstall --root /`` (an upgrade keeps everything: the new
  version's ``postinst`` installs over it).
* ``postrm purge``: what a booted instance recorded (``/var/lib/netinject``, the log).

``dpkg-deb`` builds it (root:root, xz, the file dates fixed): two builds of the same
netinject are byte-identical.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import guest_bundle
from .errors import NetinjectError
from .guest.contract import VERSION
from .hostio import staged_file

PACKAGE = "netinject-guest"
PYZ_PATH = "usr/share/netinject-guest/netinject-guest.pyz"
DOC_DIR = "usr/share/doc/netinject-guest"
EPOCH = 1262304000  # 2010-01-01, the bundle's own zip dates
DEFAULT_MAINTAINER = "netinject developers <netinject@example.org>"
_MAINTAINER = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .'-]{0,63} <[A-Za-z0-9._+-]{1,64}@"
                         r"[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+>", re.ASCII)


class DebError(NetinjectError):
    """The package could not be built (dpkg-deb missing or failing)."""


@dataclass(frozen=True)
class Maintainer:
    """The control file's Maintainer: 'Full Name <address>' (parsed, printed back)."""

    name: str
    address: str

    @classmethod
    def parse(cls, text: str) -> Maintainer:
        if not _MAINTAINER.fullmatch(text):
            raise ValueError(f"--maintainer: {text!r} is not 'Full Name <user@domain>' "
                             "(ASCII letters, digits, spaces, . ' -)")
        name, _, rest = text.partition(" <")
        return cls(name, rest[:-1])

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>"


def _control(size_kib: int, maintainer: Maintainer) -> str:
    return (f"Package: {PACKAGE}\n"
            f"Version: {VERSION}\n"
            "Architecture: all\n"
            f"Maintainer: {maintainer}\n"
            f"Installed-Size: {size_kib}\n"
            "Depends: python3 (>= 3.9)\n"
            "Section: net\n"
            "Priority: optional\n"
            "Description: static network config for cloud instances, from the config drive\n"
            " netinject's guest agent installs, on an instance's first boot and before\n"
            " the network service starts, the static network configuration (addresses,\n"
            " routes, DNS, NIC names pinned to MACs) that the cloud rendered from\n"
            " Neutron's data onto the config drive, so the instance does not wait on\n"
            " DHCP. On any problem it steps aside and the image's own configuration\n"
            " (DHCP) stays. It also takes NIC hot-plug and live changes through\n"
            " qemu-guest-agent. Standard library only.\n")


_PY = "python3 -I /" + PYZ_PATH

POSTINST = f"""#!/bin/sh
# netinject-guest: install the boot service with the bundle's own installer.
set -e
if [ "$1" = configure ]; then
    {_PY} install --root /
fi
exit 0
"""

PRERM = f"""#!/bin/sh
# netinject-guest: remove what postinst installed (an upgrade keeps it).
set -e
if [ "$1" = remove ]; then
    {_PY} uninstall --root /
fi
exit 0
"""

POSTRM = """#!/bin/sh
# netinject-guest: purge what a booted instance recorded.
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/netinject
    rm -f /var/log/netinject.log
fi
exit 0
"""

COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: netinject

Files: *
Copyright: 2026 netinject developers
License: Apache-2.0

License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 can be
 found in the file `/usr/share/common-licenses/Apache-2.0'.
"""


def _changelog(maintainer: Maintainer) -> bytes:
    text = (f"{PACKAGE} ({VERSION}) unstable; urgency=medium\n\n"
            f"  * netinject {VERSION}: the guest agent, built by netinject guest-bundle --deb.\n\n"
            f" -- {maintainer}  Fri, 01 Jan 2010 00:00:00 +0000\n")
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(text.encode())
    return buf.getvalue()


def package_files(pyz: bytes, maintainer: Maintainer) -> dict[str, tuple[bytes, int]]:
    """The package's data files: path -> (content, mode)."""
    return {PYZ_PATH: (pyz, 0o644),
            f"{DOC_DIR}/copyright": (COPYRIGHT.encode(), 0o644),
            f"{DOC_DIR}/changelog.gz": (_changelog(maintainer), 0o644)}


def build(out: Path, maintainer: Maintainer | None = None) -> Path:
    """Write the package to ``out`` (whole or not at all)."""
    maintainer = maintainer or Maintainer.parse(DEFAULT_MAINTAINER)
    dpkg_deb = shutil.which("dpkg-deb")
    if dpkg_deb is None:
        raise DebError("dpkg-deb not found (Debian's dpkg package): it builds the .deb")
    with tempfile.TemporaryDirectory(prefix="netinject-deb-") as tmp:
        pyz = Path(tmp) / "bundle.pyz"
        guest_bundle.build(pyz)
        stage = Path(tmp) / "pkg"
        files = package_files(pyz.read_bytes(), maintainer)
        size = sum((len(data) + 1023) // 1024 for data, _ in files.values())
        control = {"control": (_control(size, maintainer).encode(), 0o644),
                   "md5sums": ("".join(f"{hashlib.md5(d).hexdigest()}  {p}\n"
                                       for p, (d, _) in sorted(files.items())).encode(),
                               0o644),
                   "postinst": (POSTINST.encode(), 0o755),
                   "prerm": (PRERM.encode(), 0o755),
                   "postrm": (POSTRM.encode(), 0o755)}
        for rel, (data, mode) in [*files.items(),
                                  *((f"DEBIAN/{n}", v) for n, v in control.items())]:
            path = stage / rel
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            path.write_bytes(data)
            path.chmod(mode)
        for path in [stage, *stage.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
            os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)}
        with staged_file(out, 0o644) as staged:
            done = subprocess.run(
                [dpkg_deb, "--root-owner-group", "-Zxz", "--build", str(stage), str(staged)],
                capture_output=True, text=True, env=env, check=False, timeout=300)
            if done.returncode != 0:
                raise DebError(f"dpkg-deb failed (exit {done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()}")
    return out
