"""Run dpkg on a .deb in a throw-away chroot: an overlay over a cached base tree (the
test bed's Debian image tree, never changed: its changes go to an upper directory that
is removed afterwards), in a private mount namespace (``unshare --mount``), so nothing of
this machine's is mounted or changed.

``run_steps`` runs shell steps in the chroot one after the other and takes a snapshot of
the tree (path -> kind, mode, owner, content hash or link target) before the first step
and after each; dpkg's own records (its database, its log) are left out of them, as
piuparts leaves them out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# dpkg's and apt's own records: they change on every dpkg run (piuparts ignores them too).
IGNORED = ("var/lib/dpkg/", "var/log/dpkg.log", "var/cache/debconf/", "var/log/apt/",
           "var/cache/ldconfig/", "tmp/", "run/", "dev/", "proc/", "sys/")

_INSIDE = r'''
import hashlib, json, os, stat, subprocess, sys

base, upper, work, merged, deb, steps, ignored = json.loads(sys.argv[1])
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                "lowerdir=%s,upperdir=%s,workdir=%s" % (base, upper, work), merged],
               check=True)
for d in ("dev", "proc"):
    os.makedirs(os.path.join(merged, d), exist_ok=True)
subprocess.run(["mount", "--rbind", "/dev", os.path.join(merged, "dev")], check=True)
subprocess.run(["mount", "-t", "proc", "proc", os.path.join(merged, "proc")], check=True)
with open(deb, "rb") as f, open(os.path.join(merged, "tmp/netinject-guest.deb"), "wb") as o:
    o.write(f.read())

def snap():
    out = {}
    for top, dirs, files in os.walk(merged):
        rel_top = os.path.relpath(top, merged)
        for name in dirs + files:
            rel = os.path.normpath(os.path.join(rel_top, name))
            if any((rel + "/").startswith(p) or rel == p.rstrip("/") for p in ignored):
                continue
            st = os.lstat(os.path.join(top, name))
            if stat.S_ISLNK(st.st_mode):
                what = "link:" + os.readlink(os.path.join(top, name))
            elif stat.S_ISREG(st.st_mode):
                with open(os.path.join(top, name), "rb") as f:
                    what = "file:" + hashlib.sha256(f.read()).hexdigest()
            else:
                what = "dir" if stat.S_ISDIR(st.st_mode) else "other"
            out[rel] = [what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
    return out

report = {"snapshots": [snap()], "steps": []}
for step in steps:
    done = subprocess.run(["chroot", merged, "/bin/sh", "-c", step],
                          capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
                               "DEBIAN_FRONTEND": "noninteractive"})
    report["steps"].append({"step": step, "rc": done.returncode,
                            "output": done.stdout + done.stderr})
    report["snapshots"].append(snap())
json.dump(report, sys.stdout)
'''


def run_steps(base: Path, deb: Path, steps: list[str]) -> dict[str, Any]:
    """{"snapshots": [before, after step 1, ...], "steps": [{"step", "rc", "output"}]}."""
    with tempfile.TemporaryDirectory(prefix="netinject-deb-chroot-") as tmp:
        dirs = [Path(tmp) / d for d in ("upper", "work", "merged")]
        for d in dirs:
            d.mkdir()
        args = json.dumps([str(base), *map(str, dirs), str(deb), steps, list(IGNORED)])
        done = subprocess.run(["unshare", "--mount", sys.executable, "-c", _INSIDE, args],
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The paths that differ between two snapshots: path -> (in a, in b)."""
    return {p: (a.get(p), b.get(p)) for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p)}
