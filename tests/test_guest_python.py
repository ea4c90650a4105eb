"""The interpreter the agent's tests run it with (GUEST_PYTHON) is the one the run claims.

scripts/test.sh runs the agent's own tests under bullseye's Python 3.9 and trixie's 3.13
too (netinject.vm.pytree), naming the version in NETINJECT_GUEST_PYTHON_VERSION: a wrapper
that ran this host's Python instead would pass them all and prove nothing.
"""

from __future__ import annotations

import os
import subprocess

from helpers.guest import AGENT, GUEST_PYTHON, GUEST_VERSION
from netinject.vm.apt import SUITE
from netinject.vm.pytree import RELEASES


def test_the_guest_python_is_the_version_claimed() -> None:
    claimed = os.environ.get("NETINJECT_GUEST_PYTHON_VERSION")
    if os.environ.get("NETINJECT_GUEST_PYTHON"):
        assert claimed, "NETINJECT_GUEST_PYTHON is set without NETINJECT_GUEST_PYTHON_VERSION"
    else:
        assert GUEST_PYTHON == "/usr/bin/python3"
        claimed = claimed or RELEASES[SUITE]  # the test-bed images' Debian python3
    assert claimed == "{}.{}".format(*GUEST_VERSION)


def test_the_agent_hashes_with_the_builtin_module_of_its_python() -> None:
    """sha256 without OpenSSL: _sha256 up to 3.11, _sha2 from 3.12 (guest/contract.py);
    hashlib (OpenSSL) is not loaded for it."""
    code = (f"import sys; sys.path.insert(0, {str(AGENT.parent)!r}); "
            "import netinject_guest as a; "
            "print(a.sha256_hex(b'netinject')); "
            "print(' '.join(m for m in ('_sha256', '_sha2', 'hashlib') if m in sys.modules))")
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=True, timeout=60)
    digest, loaded = done.stdout.splitlines()
    import hashlib

    assert digest == hashlib.sha256(b"netinject").hexdigest()
    assert loaded == ("_sha2" if GUEST_VERSION >= (3, 12) else "_sha256")
