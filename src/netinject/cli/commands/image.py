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


def cmd_image_build(args: argparse.Namespace) -> int:
    import shutil

    from ...vm import image
    from ...vm.progress import Progress

    names = args.variant or list(image.VARIANTS)
    for n in names:
        if n not in image.VARIANTS:
            from ...errors import UsageError

            raise UsageError(f"unknown variant {n!r} (known: {', '.join(image.VARIANTS)})")
    progress = Progress()
    args.out.mkdir(parents=True, exist_ok=True)
    for n in names:
        built = image.build_variant(n, progress)
        recipe = image.VARIANTS[n]
        suffix = "" if recipe == "ifupdown" else f"-{recipe}"
        for src, dst in ((built.image, args.out / f"{n}.img"),
                         (built.kernel, args.out / f"vmlinuz{suffix}"),
                         (built.initrd, args.out / f"initrd.img{suffix}")):
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
            print(dst)
    return 0
