"""netinject image build: Debian guest images for the boot benchmark and tests."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    img = sub.add_parser(
        "image", help="build Debian guest images (for the boot benchmark and tests)",
        description="Guest images built from Debian packages with mmdebstrap (the mirrors "
                    "this machine's apt uses) and packed with mkfs.ext4 -d: no loop mounts.")
    isub = img.add_subparsers(dest="image_cmd", metavar="ACTION", required=True)
    from ...vm.image import RELEASES, VARIANTS

    ib = isub.add_parser("build", help="build variant images into a directory",
                         description="Build variants (each from its network stack's cached "
                                     "base) and put <variant>.img into --out, with the "
                                     "kernel and initrd as vmlinuz and initrd.img (ifupdown "
                                     "images) or vmlinuz-<stack> and initrd.img-<stack>; "
                                     "an image of another Debian release than bookworm "
                                     "gets @<release> after each name.")
    ib.add_argument("--variant", action="append", metavar="NAME[@RELEASE]",
                    help=", ".join(VARIANTS) + "; @RELEASE: on Debian " + ", ".join(RELEASES)
                         + " (default bookworm) (repeatable; default: all, bookworm)")
    ib.add_argument("--out", type=Path, required=True, metavar="DIR")
    ib.set_defaults(func=cmd_image_build)
    from ...guest.stacks import STACK_NAMES

    ia = isub.add_parser(
        "add-agent", help="put the guest agent into an existing Debian disk image",
        description="Install the guest agent's boot service into an existing Debian "
                    "image (raw or qcow2; its ext4 root on the whole disk or a partition) "
                    "as 'netinject-guest.pyz install --root' does, without a kernel mount "
                    "or a VM: the filesystem is opened with e2fsprogs' fuse2fs, a qcow2 "
                    "through qemu-storage-daemon. The image is checked first (read-only): "
                    "a non-Debian image, a disk with no ext4 root or a read-only file is "
                    "refused (exit 2) and left untouched.",
        epilog="With libguestfs: virt-customize -a DISK --copy-in "
               "netinject-guest_all.deb:/tmp --run-command 'dpkg -i "
               "/tmp/netinject-guest_all.deb' (netinject guest-bundle --deb).")
    ia.add_argument("disk", type=Path, metavar="DISK", help="the image file (changed in place)")
    ia.add_argument("--stack", choices=STACK_NAMES,
                    help="the image's network stack (default: detected, as install does)")
    ia.set_defaults(func=cmd_image_add_agent)


def cmd_image_add_agent(args: argparse.Namespace) -> int:
    import sys

    from ... import disk

    disk.add_agent(args.disk, args.stack, lambda msg: print(msg, file=sys.stderr))
    print(args.disk)
    return 0


def _outputs(names: list[str]) -> dict[str, tuple[str, str, str]]:
    """Each variant's three files in --out: <variant>.img, and the kernel and initrd as
    vmlinuz and initrd.img (ifupdown images) or vmlinuz-<stack> and initrd.img-<stack>."""
    from ...vm import image

    out = {}
    for n in names:
        variant, release = image.parse_variant(n)
        recipe = image.VARIANTS[variant]
        suffix = "" if recipe == "ifupdown" else f"-{recipe}"
        if release != image.SUITE:
            suffix += f"@{release}"
        out[n] = (f"{n}.img", f"vmlinuz{suffix}", f"initrd.img{suffix}")
    return out


def cmd_image_build(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import PurePosixPath

    from ...hostio import check_tree, staged_file
    from ...vm import image
    from ...vm.progress import Progress

    names = args.variant or list(image.VARIANTS)
    for n in names:
        try:
            image.parse_variant(n)
        except image.ImageBuildError as exc:
            from ...errors import UsageError

            raise UsageError(f"--variant: {exc}") from None
    files = _outputs(names)
    # Checked before anything is built (a build takes minutes): only regular files (or
    # new paths) in --out, no link followed below it.
    check_tree(args.out, {PurePosixPath(f): None for fs in files.values() for f in fs},
               "--out")
    progress = Progress()
    for n in names:
        built = image.build_variant(n, progress)
        for src, name in zip((built.image, built.kernel, built.initrd), files[n],
                             strict=True):
            dst = args.out / name
            with staged_file(dst, 0o644, replace_symlink=True) as tmp:
                shutil.copyfile(src, tmp)
            print(dst)
    return 0
