"""Debian bookworm guest images built from Debian packages, without root-only mounts.

One base tree per recipe (mmdebstrap, with the mirrors this machine's apt already uses),
cached; each variant is a copy of it with a few files changed, packed into a raw ext4
image by ``mkfs.ext4 -d`` (no loop mount). The kernel and initrd boot it directly.

Variants:

* ``dhcp``: ``iface eth0 inet dhcp``, the stock image.
* ``baked-static``: the static config written into the image: the floor.
* ``inject``: ``dhcp`` plus the netinject agent (``netinject-guest install``).
* ``cloud-init``: Debian's cloud-init (ConfigDrive datasource); ENI sources interfaces.d.
* ``glean``: OpenStack's glean (from PyPI, pinned) installed by its own ``glean-install``:
  a udev rule starts ``glean@<nic>.service`` per NIC, which writes interfaces.d from the
  drive's network_data.json and brings the NIC up; ``glean-early`` mounts the drive.
* ``inject-glean``: ``glean`` plus the agent (its install extends glean's unit).

All variants carry systemd-bootchart (used only when the kernel command line names it as
init: ``bench boot --bootchart``) and a small report service that prints in-guest facts
(systemd-analyze, addresses, routes, resolv.conf, the agent log) to the serial console
after boot.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import NetinjectError
from ..guest.contract import file_mode
from ..guest.stacks import IFUPDOWN, stack_named
from ..guest.stacks import STACKS as GUEST_STACKS
from ..render import SHARED, Options, render_all
from ..sources.neutron import parse_document
from . import testbed as vm
from .apt import SUITE as SUITE
from .apt import apt_sources, release_sources
from .cache import cache_dir

# The Debian releases the test bed builds images of: bookworm (the host's, the default)
# and the releases before and after it. A variant of another release is named
# VARIANT@RELEASE (inject-networkd@trixie); the bare name is bookworm's.
RELEASES = ("bullseye", "bookworm", "trixie")
RECIPE_VERSION = 3
# What every test-bed image has besides its network stack: systemd, the kernel, Python
# for the agent, qemu-guest-agent for hot-plug, systemd-bootchart for bench --bootchart.
# The full python3, as cloud images have it (cloud-init needs it): the agent's boot path
# from netinject's own drive runs on python3-minimal, but nova's drive and the metadata
# path (vendor_data2.json) need its json module, which python3-minimal lacks.
COMMON_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "iproute2", "linux-image-amd64", "initramfs-tools",
    "python3", "qemu-guest-agent", "procps", "systemd-bootchart",
)
# One base tree per network stack (guest/stacks.py: its Debian packages and the units a
# Debian image enables for it). The ifupdown base also carries cloud-init, for the
# cloud-init scenario (its other variants disable it).
EXTRA_PACKAGES = {IFUPDOWN.name: ("cloud-init",)}
RECIPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    s.name: ((*COMMON_PACKAGES, *s.debian_packages, *EXTRA_PACKAGES.get(s.name, ())),
             s.debian_enable) for s in GUEST_STACKS}
# A small initramfs (virtio + ext4) instead of MODULES=most: seconds less to unpack
# under emulation, for every variant alike.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console",
                     "virtio_scsi", "ext4", "crc32c_generic")
DPKG_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*",
                 "/usr/share/info/*")
# The stacks with variants of their own (ifupdown's are the unprefixed ones).
STACKS = tuple(s.name for s in GUEST_STACKS if s is not IFUPDOWN)
# Variant -> the recipe of its base tree.
VARIANTS: dict[str, str] = {
    "dhcp": "ifupdown", "baked-static": "ifupdown", "inject": "ifupdown",
    "cloud-init": "ifupdown", "glean": "ifupdown", "inject-cloud-init": "ifupdown",
    "cloud-init-hotplug": "ifupdown", "inject-glean": "ifupdown",
    **{f"{kind}{stack}": stack for stack in STACKS for kind in ("", "baked-", "inject-")},
}
# glean as our peer: the PyPI release, pinned so the image (and its cache key) is fixed.
GLEAN_VERSION = "1.25.1"
BOOTCHART_INIT = "/lib/systemd/systemd-bootchart"
KERNEL_APPEND = "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0 panic=-1"

# The files a variant adds to its base, shipped as package data in netinject/vm/files/
# (read as bytes, so their bytes are what the image and its cache key get):
#
# * interfaces.dhcp, 99-dhcp.network, 50-cloud-init.yaml: what a stock image of each
#   stack asks DHCP with (a cloud image's generic config), as /etc/network/interfaces,
#   /etc/systemd/network/99-dhcp.network and /etc/netplan/50-cloud-init.yaml;
# * interfaces.cloud-init, 99-netinject-bench.cfg: the cloud-init image's ENI (sources
#   interfaces.d) and its datasource list (/etc/cloud/cloud.cfg.d/);
# * 99-cloud-init-hotplug.cfg: the cloud-init-hotplug image's cloud.cfg.d file (the
#   OpenStack datasource on nova's metadata API, cloud-init's network hotplug on);
# * interfaces.glean: the glean image's ENI (glean writes one file per NIC);
# * netinject-report.sh, netinject-report.service: the report service (harness.py parses
#   its output), as /usr/local/sbin/netinject-report and its unit (the script's three
#   long lines are its bytes from when it was a Python string, whose backslash-newlines
#   joined them: splitting them again would change every image's cache key);
# * bootchart.conf: systemd-bootchart's limits (sampling stops on SIGHUP from the report,
#   when boot has finished; these only bound it).
DATA_FILES = (
    "interfaces.dhcp", "99-dhcp.network", "50-cloud-init.yaml", "interfaces.cloud-init",
    "99-netinject-bench.cfg", "99-cloud-init-hotplug.cfg", "interfaces.glean",
    "netinject-report.sh", "netinject-report.service", "bootchart.conf",
)


def data_file(name: str) -> bytes:
    """A file of netinject/vm/files/ (package data), exactly as shipped."""
    return (resources.files("netinject.vm") / "files" / name).read_bytes()


# The texts by their former names (tests use them).
DHCP_ENI = data_file("interfaces.dhcp").decode()
NETWORKD_DHCP = data_file("99-dhcp.network").decode()
NETPLAN_DHCP = data_file("50-cloud-init.yaml").decode()
CLOUD_INIT_ENI = data_file("interfaces.cloud-init").decode()
CLOUD_INIT_CFG = data_file("99-netinject-bench.cfg").decode()
GLEAN_ENI = data_file("interfaces.glean").decode()
REPORT_SCRIPT = data_file("netinject-report.sh").decode()
REPORT_UNIT = data_file("netinject-report.service").decode()
BOOTCHART_CONF = data_file("bootchart.conf").decode()


class ImageBuildError(NetinjectError):
    """The guest image could not be built."""


@dataclass(frozen=True)
class Base:
    root: Path
    kernel: Path
    initrd: Path
    key: str
    release: str = SUITE


@dataclass(frozen=True)
class VariantImage:
    name: str
    image: Path
    kernel: Path
    initrd: Path
    release: str = SUITE

    @property
    def kernel_append(self) -> str:
        """The kernel command line this image boots with. Debian 11's and 13's images
        also mask the serial console's getty: on Debian 13 it starts as boot finishes, and
        its agetty hangs up ttyS0 under the report being written there (the report was
        cut after its first line, seen in every trixie boot); bookworm's images boot as
        their published figures were measured."""
        if self.release == SUITE:
            return KERNEL_APPEND
        return KERNEL_APPEND + " systemd.mask=serial-getty@ttyS0.service"


Progress = Callable[[str], None]


@contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``.lock, held while one process builds a cached tree or
    image (another waits, then finds it built)."""
    with open(f"{path}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def parse_variant(name: str) -> tuple[str, str]:
    """``VARIANT[@RELEASE]`` -> (variant, release); ImageBuildError names what is unknown."""
    variant, at, release = name.partition("@")
    if variant not in VARIANTS:
        raise ImageBuildError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    if at and release not in RELEASES:
        raise ImageBuildError(f"unknown release {release!r} in {name!r} (known: "
                              f"{', '.join(RELEASES)})")
    return variant, release or SUITE


def _recipe(recipe: str, release: str = SUITE) -> dict[str, object]:
    packages, enable = RECIPES[recipe]
    out: dict[str, object] = {"suite": release, "version": RECIPE_VERSION,
                              "packages": packages, "modules": INITRAMFS_MODULES,
                              "excludes": DPKG_EXCLUDES}
    if enable:
        out["enable"] = enable
    return out


def base_key(recipe: str = "ifupdown", release: str = SUITE) -> str:
    h = hashlib.sha256(json.dumps(_recipe(recipe, release), sort_keys=True).encode())
    for src in apt_sources():
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def _boot_files(root: Path) -> tuple[Path, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise ImageBuildError(f"no kernel/initrd in {root}/boot")
    return kernels[-1], initrds[-1]


def _run(args: list[str], what: str, log: Path | None = None) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=1800)
    except FileNotFoundError:
        raise ImageBuildError(f"{args[0]} not found: run scripts/setup.sh") from None
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ImageBuildError(f"{what} failed (exit {done.returncode}):\n{tail}")


def build_base(progress: Progress, cache: Path | None = None,
               recipe: str = "ifupdown", release: str = SUITE) -> Base:
    """The cached base tree of a recipe (RECIPES) on a Debian release (RELEASES); built
    with mmdebstrap if missing. One build at a time per tree (a lock in the cache):
    parallel test workers wait for each other's build instead of racing it."""
    packages, enable = RECIPES[recipe]
    key = base_key(recipe, release)
    top = (cache or cache_dir()) / f"base-{key}"
    root = top / "root"
    # The recipe's name in the cache (an older build of the same name is outdated):
    # bookworm's bare, as before releases were added, so its builds keep their keys.
    label = recipe if release == SUITE else f"{recipe}@{release}"
    top.mkdir(parents=True, exist_ok=True)
    with cache_lock(top):
        if (top / "done").exists():
            kernel, initrd = _boot_files(root)
            progress(f"base image {label} {key}: cached")
            return Base(root, kernel, initrd, key, release)
        return _build_base(progress, top, label, packages, enable, release)


def _build_base(progress: Progress, top: Path, label: str, packages: tuple[str, ...],
                enable: tuple[str, ...], release: str) -> Base:
    root = top / "root"
    key = top.name.removeprefix("base-")
    sources: list[str] = ([str(p) for p in apt_sources()] if release == SUITE
                          else release_sources(release))
    if not sources:
        raise ImageBuildError("no apt sources configured on this machine for "
                              f"{SUITE} (mmdebstrap uses them as its mirrors)")
    tmp = top / "root.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    modules = "\\n".join(INITRAMFS_MODULES)
    hook = ('mkdir -p "$1/etc/initramfs-tools/conf.d" && '
            'echo MODULES=list > "$1/etc/initramfs-tools/conf.d/netinject.conf" && '
            f'printf "{modules}\\n" >> "$1/etc/initramfs-tools/modules"')
    args = ["mmdebstrap", "--mode=root", "--variant=minbase",
            "--aptopt=APT::Install-Recommends \"false\"",
            *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
            f"--include={','.join(packages)}",
            f"--essential-hook={hook}",
            *(f'--customize-hook=chroot "$1" systemctl enable {unit}' for unit in enable),
            release, str(tmp), *sources]
    progress(f"building base image {label} {key} with mmdebstrap ({release}, "
             f"{len(packages)} packages; takes a few minutes, once)")
    _run(args, "mmdebstrap", top / "mmdebstrap.log")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    (top / "recipe").write_text(label + "\n")
    (top / "done").write_text(key + "\n")
    kernel, initrd = _boot_files(root)
    progress(f"base image {label} {key}: built ({kernel.name})")
    for stale in top.parent.glob("base-*"):
        # An older build of the same recipe (the recipe or the apt sources changed).
        marker = stale / "recipe"
        if stale != top and marker.is_file() and marker.read_text().strip() == label:
            progress(f"removing the outdated base {stale.name}")
            shutil.rmtree(stale, ignore_errors=True)
    return Base(root, kernel, initrd, key, release)




def variant_files(name: str) -> dict[str, tuple[bytes, int]]:
    """Files (relative path -> (content, mode)) that make ``name`` out of its base (the
    same on every release)."""
    name = parse_variant(name)[0]
    recipe = VARIANTS[name]
    files: dict[str, tuple[bytes, int]] = {
        "etc/hostname": (b"debian\n", 0o644),
        "etc/hosts": (b"127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n", 0o644),
        "etc/fstab": (b"/dev/vda / ext4 defaults 0 1\n", 0o644),
        "usr/local/sbin/netinject-report": (data_file("netinject-report.sh"), 0o755),
        "etc/systemd/system/netinject-report.service":
            (data_file("netinject-report.service"), 0o644),
        "etc/systemd/bootchart.conf": (data_file("bootchart.conf"), 0o644),
    }
    baked = name == "baked-static" or name.startswith("baked-")
    if recipe == "ifupdown":
        files["etc/network/interfaces"] = (data_file("interfaces.dhcp"), 0o644)
    elif recipe == "networkd" and not baked:
        files["etc/systemd/network/99-dhcp.network"] = (data_file("99-dhcp.network"), 0o644)
    elif recipe == "netplan" and not baked:
        files["etc/netplan/50-cloud-init.yaml"] = (data_file("50-cloud-init.yaml"), 0o600)
    with_cloud_init = name in ("cloud-init", "inject-cloud-init", "cloud-init-hotplug")
    if not with_cloud_init:
        files["etc/cloud/cloud-init.disabled"] = (b"", 0o644)
    else:  # cloud-init kept, alone or beside the agent (as cloud images keep it)
        files["etc/network/interfaces"] = (data_file("interfaces.cloud-init"), 0o644)
        cfg = ("99-cloud-init-hotplug.cfg" if name == "cloud-init-hotplug"
               else "99-netinject-bench.cfg")
        files[f"etc/cloud/cloud.cfg.d/{cfg}"] = (data_file(cfg), 0o644)
    if baked:
        instance = parse_document(vm.document()).instance
        for path, text in render_all(instance, (stack_named(recipe).format, *SHARED),
                                     Options()).items():
            files[str(path)] = (text.encode(), file_mode(str(path)))
    elif name in ("glean", "inject-glean"):
        files["etc/network/interfaces"] = (data_file("interfaces.glean"), 0o644)
        # Marker for the cache key: the glean release installed below.
        files["usr/local/share/netinject-glean-version"] = (GLEAN_VERSION.encode(), 0o644)
    if name.startswith("inject"):
        from ..guest_bundle import agent_source, image_source, launcher_source

        # Marker for the cache key: the agent, its launcher and its installer, installed
        # below, exactly.
        files["usr/lib/netinject/.agent-sha256"] = (hashlib.sha256(
            agent_source() + launcher_source() + image_source().encode()
        ).hexdigest().encode(), 0o644)
    return files


def _variant_key(base: Base, name: str) -> str:
    h = hashlib.sha256(base.key.encode() + name.encode())
    for path, (content, mode) in sorted(variant_files(name).items()):
        h.update(f"{path}:{mode:o}:".encode() + hashlib.sha256(content).digest())
    return h.hexdigest()[:16]


def build_variant(name: str, progress: Progress, cache: Path | None = None) -> VariantImage:
    """The cached image of ``VARIANT[@RELEASE]``; built from its base if missing (one
    build at a time per name, as for the bases)."""
    variant, release = parse_variant(name)
    base = build_base(progress, cache, VARIANTS[variant], release)
    key = _variant_key(base, name)
    out_dir = (cache or cache_dir()) / "variants"
    out_dir.mkdir(parents=True, exist_ok=True)
    with cache_lock(out_dir / f".{name}"):
        return _build_variant(name, variant, base, out_dir / f"{name}-{key}.img", progress)


def _build_variant(name: str, variant: str, base: Base, image: Path,
                   progress: Progress) -> VariantImage:
    out_dir = image.parent
    cache = out_dir.parent
    if image.exists():
        progress(f"image {name}: cached ({image.name})")
        return VariantImage(name, image, base.kernel, base.initrd, base.release)
    progress(f"image {name}: building")
    with tempfile.TemporaryDirectory(prefix=f"netinject-{name}-", dir=out_dir) as tmp:
        staging = Path(tmp) / "root"
        _run(["cp", "-a", "--reflink=auto", str(base.root), str(staging)], "copying the base")
        add_variant_files(staging, variant)
        if variant in ("glean", "inject-glean"):  # (before the agent: it extends glean's units)
            install_glean(staging, lambda msg: progress(f"image {name}: {msg}"), cache)
        if variant.startswith("inject"):
            from ..guest.image import MODULE_PATH, install_agent
            from ..guest_bundle import agent_source, launcher_source

            if install_agent(str(staging), lambda msg: progress(f"image {name}: {msg}"),
                             agent_source(), launcher_source()) != 0:
                raise ImageBuildError(f"image {name}: netinject-guest install failed")
            if base.release != SUITE:
                # The installer (this Python) cannot compile for another release's
                # Python: the image builder's way, the image's own python3 in a chroot.
                _run(["chroot", str(staging), "/usr/bin/python3", "-I", "-m", "py_compile",
                      "/" + MODULE_PATH],
                     f"image {name}: precompiling the agent with the image's Python")
                progress(f"image {name}: precompiled the agent with the image's python3")
        pack_ext4(staging, Path(tmp) / "root.img", image)
    for stale in out_dir.glob(f"{name}-*.img"):
        # An older build of this very variant (inject-<key>, not inject-networkd-<key>).
        if stale != image and re.fullmatch(re.escape(name) + r"-[0-9a-f]{16}\.img",
                                           stale.name, re.ASCII):
            stale.unlink()
    progress(f"image {name}: built ({image.stat().st_size // (1024 * 1024)} MiB)")
    return VariantImage(name, image, base.kernel, base.initrd, base.release)


def add_variant_files(staging: Path, variant: str) -> None:
    """Write a variant's files (variant_files) into a root tree and enable its report
    service: what makes a tree a test-bed image of that variant."""
    for rel, (content, mode) in variant_files(variant).items():
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_bytes(content)
        target.chmod(mode)
    wants = staging / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "netinject-report.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/netinject-report.service")


def pack_ext4(staging: Path, partial: Path, image: Path) -> None:
    """Pack a root tree into an ext4 image (``mkfs.ext4 -d``, no loop mount) labelled
    root, with 30% + 256 MiB of room, written as ``partial`` and renamed to ``image``."""
    size_mb = _du_mb(staging) * 13 // 10 + 256
    _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(staging), str(partial),
          f"{size_mb}M"], "mkfs.ext4 -d")
    partial.rename(image)


def glean_wheel(progress: Progress, cache: Path | None = None) -> Path:
    """glean's wheel, pinned (GLEAN_VERSION), from the package index this machine's pip is
    configured with; downloaded once into the cache."""
    d = (cache or cache_dir()) / "wheels"
    d.mkdir(parents=True, exist_ok=True)
    with cache_lock(d / ".glean"):  # pip writes the wheel in place: one download at a time
        return _glean_wheel(d, progress)


def _glean_wheel(d: Path, progress: Progress) -> Path:
    found = sorted(d.glob(f"glean-{GLEAN_VERSION}-*.whl"))
    if found:
        return found[0]
    progress(f"downloading glean {GLEAN_VERSION} (pip, this machine's index)")
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
          "--dest", str(d), f"glean=={GLEAN_VERSION}"], "pip download glean")
    found = sorted(d.glob(f"glean-{GLEAN_VERSION}-*.whl"))
    if not found:
        raise ImageBuildError(f"pip download left no glean {GLEAN_VERSION} wheel in {d}")
    return found[0]


def install_glean(root: Path, progress: Progress, cache: Path | None = None) -> None:
    """Install glean into the image tree as an image builder does (diskimage-builder's
    simple-init element): the package into the guest Python's site directory, byte-compiled
    by the guest's own Python, then glean's own installer run in the tree (its units, the
    udev rule, ``systemctl enable glean-early``)."""
    wheel = glean_wheel(progress, cache)
    python = (root / "usr/bin/python3").resolve().name  # python3.11 on bookworm
    site = root / "usr/local/lib" / python / "dist-packages"
    progress(f"installing {wheel.name}")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile",
          "--disable-pip-version-check", "--target", str(site), str(wheel)],
         "pip install glean")
    inside = f"/usr/local/lib/{python}/dist-packages"
    _run(["chroot", str(root), "/usr/bin/python3", "-m", "compileall", "-q", inside],
         "compiling glean with the guest's Python")
    _run(["chroot", str(root), "/usr/bin/python3", "-m", "glean.install"],
         "glean-install (in the image tree)")
    for unit in ("usr/lib/systemd/system/glean@.service",
                 "etc/udev/rules.d/99-glean.rules",
                 "etc/systemd/system/multi-user.target.wants/glean-early.service"):
        if not (root / unit).exists() and not (root / unit).is_symlink():
            raise ImageBuildError(f"glean-install left no {unit}")


def _du_mb(path: Path) -> int:
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])
