"""A test-bed image built by diskimage-builder with netinject's element.

``disk-image-create -t tar debian-minimal netinject-testbed netinject`` (diskimage-builder
from PyPI, pinned: a dev dependency), partitionless (a tar of the root tree: the ``vm``
element's partitions need device-mapper, which these machines lack), from the Debian
mirrors this machine's apt uses (``DIB_DISTRIBUTION_MIRROR``, ``DIB_DEBIAN_SECURITY_MIRROR``
read from apt's sources, never written down here). ``elements/netinject`` installs the
agent from the bundle (``DIB_NETINJECT_BUNDLE``) with the image's own python3 in DIB's
chroot; ``tests/dib/netinject-testbed`` adds ifupdown and what the harness needs. The tar
is unpacked, given the test bed's report service and stock DHCP config (as every test-bed
variant), packed by ``mkfs.ext4 -d`` and booted with its own kernel and initrd. Cached by
its recipe: diskimage-builder's version, both elements' files, the agent's bundle, the
release and the apt sources.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .apt import SUITE, apt_sources, source_entries
from .cache import cache_dir
from .image import (
    ImageBuildError,
    Progress,
    VariantImage,
    _boot_files,
    _run,
    add_variant_files,
    cache_lock,
    pack_ext4,
)

REPO = Path(__file__).resolve().parents[3]
ELEMENT = REPO / "elements/netinject"
TESTBED_ELEMENT = REPO / "tests/dib/netinject-testbed"
ELEMENTS = ("debian-minimal", "netinject-testbed", "netinject")
RECIPE_VERSION = 1


def dib_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diskimage-builder")
    except PackageNotFoundError:
        raise ImageBuildError("diskimage-builder is not installed: run scripts/setup.sh "
                              "(a dev dependency)") from None


def mirrors(release: str = SUITE) -> dict[str, str]:
    """diskimage-builder's Debian mirror settings from this machine's apt sources."""
    main = security = ""
    for _opts, uri, suite, _components in source_entries():
        if suite == release and not main:
            main = uri
        elif suite == f"{release}-security" and not security:
            security = uri
    if not main:
        raise ImageBuildError(f"no apt source of this machine names the suite {release}")
    out = {"DIB_DISTRIBUTION_MIRROR": main}
    if security:
        out["DIB_DEBIAN_SECURITY_MIRROR"] = security
    return out


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root)}:{path.stat().st_mode & 0o777:o}:".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def dib_key(bundle: bytes, release: str = SUITE) -> str:
    recipe = {"version": RECIPE_VERSION, "dib": dib_version(), "release": release,
              "elements": ELEMENTS, "netinject": _tree_digest(ELEMENT),
              "testbed": _tree_digest(TESTBED_ELEMENT),
              "bundle": hashlib.sha256(bundle).hexdigest(), "mirrors": mirrors(release)}
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    for src in apt_sources():
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def build_dib_image(progress: Progress, cache: Path | None = None,
                    release: str = SUITE) -> VariantImage:
    """The cached image built by diskimage-builder (see the module docstring)."""
    from ..guest_bundle import build as build_bundle

    with tempfile.TemporaryDirectory(prefix="netinject-dib-bundle-") as tmp:
        bundle_path = Path(tmp) / "netinject-guest.pyz"
        build_bundle(bundle_path)
        bundle = bundle_path.read_bytes()
        key = dib_key(bundle, release)
        top = (cache or cache_dir()) / f"dib-{key}"
        image = top / "root.img"
        top.mkdir(parents=True, exist_ok=True)
        with cache_lock(top):
            if (top / "done").exists():
                progress(f"diskimage-builder image {key}: cached")
            else:
                _build(progress, top, bundle_path, release)
            kernel, initrd = _boot_files(top)
        for stale in top.parent.glob("dib-*"):
            if stale != top and stale.is_dir() and (stale / "done").exists():
                shutil.rmtree(stale, ignore_errors=True)
    return VariantImage(f"dib@{release}" if release != SUITE else "dib", image, kernel,
                        initrd, release)


def _build(progress: Progress, top: Path, bundle: Path, release: str) -> None:
    venv_bin = Path(sys.executable).parent
    dib = venv_bin / "disk-image-create"
    if not dib.exists():
        raise ImageBuildError(f"{dib} not found: run scripts/setup.sh")
    for tool in ("debootstrap", "sudo"):
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{tool} not found (diskimage-builder needs it): run "
                                  "scripts/setup.sh")
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
           "DIB_RELEASE": release, "DIB_NETINJECT_BUNDLE": str(bundle),
           "ELEMENTS_PATH": f"{ELEMENT.parent}:{TESTBED_ELEMENT.parent}",
           **mirrors(release)}
    for d in ("out", "staging", "boot"):
        shutil.rmtree(top / d, ignore_errors=True)
    (top / "out").mkdir()
    progress(f"building the diskimage-builder image with disk-image-create "
             f"{' '.join(ELEMENTS)} (-t tar, {release}; a few minutes, once)")
    start = time.monotonic()
    with open(top / "disk-image-create.log", "w") as log:
        done = subprocess.run([str(dib), "--no-tmpfs", "-t", "tar", "-o",
                               str(top / "out/netinject"), *ELEMENTS], env=env,
                              stdout=log, stderr=subprocess.STDOUT, check=False,
                              timeout=3600)
    if done.returncode != 0:
        tail = "\n".join((top / "disk-image-create.log").read_text(
            errors="replace").splitlines()[-15:])
        raise ImageBuildError(f"disk-image-create failed (exit {done.returncode}):\n{tail}")
    progress(f"disk-image-create: done in {time.monotonic() - start:.0f} s")
    staging = top / "staging"
    staging.mkdir()
    _run(["tar", "-xf", str(top / "out/netinject.tar"), "--numeric-owner", "-C",
          str(staging)], "unpacking diskimage-builder's tar")
    # The test bed's files, as the stock dhcp variant has them (its report service, stock
    # DHCP config, hostname; the agent is the element's, not added here).
    add_variant_files(staging, "dhcp")
    (top / "boot").mkdir()
    kernel, initrd = _boot_files(staging)
    shutil.copy2(kernel, top / "boot" / kernel.name)
    shutil.copy2(initrd, top / "boot" / initrd.name)
    pack_ext4(staging, top / "root.img.partial", top / "root.img")
    shutil.rmtree(staging, ignore_errors=True)
    (top / "out/netinject.tar").unlink()
    (top / "done").write_text(f"{time.monotonic() - start:.0f}\n")
    progress(f"diskimage-builder image: built in {time.monotonic() - start:.0f} s")
