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
    from ...vm.image import VARIANTS

    ib = isub.add_parser("build", help="build variant images into a directory",
                         description="Build variants (each from its network stack's cached "
                                     "base) and put <variant>.img into --out, with the "
                                     "kernel and initrd as vmlinuz and initrd.img (ifupdown "
                                     "images) or vmlinuz-<stack> and initrd.img-<stack>.")
    ib.add_argument("--variant", action="append", metavar="NAME",
                    help=", ".join(VARIANTS) + " (repeatable; default: all)")
    ib.add_argument("--out", type=Path, required=True, metavar="DIR")
    ib.set_defaults(func=cmd_image_build)


def _outputs(names: list[str]) -> dict[str, tuple[str, str, str]]:
    """Each variant's three files in --out: <variant>.img, and the kernel and initrd as
    vmlinuz and initrd.img (ifupdown images) or vmlinuz-<stack> and initrd.img-<stack>."""
    from ...vm import image

    out = {}
    for n in names:
        recipe = image.VARIANTS[n]
        suffix = "" if recipe == "ifupdown" else f"-{recipe}"
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
        if n not in image.VARIANTS:
            from ...errors import UsageError

            raise UsageError(f"unknown variant {n!r} (known: {', '.join(image.VARIANTS)})")
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
