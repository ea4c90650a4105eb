"""Build ahead what the tests build on first use: scripts/test.sh runs this in the
background, niced, while ruff, mypy and the first tests run.

On a fresh machine the tests would otherwise build each cached image when the first test
that boots it starts: minutes of mmdebstrap during which the run waits. pytest runs on
one worker (two emulated guests side by side miss their deadlines on a 2-core machine),
so the second core is idle during the unit tests: these builds run there. Every build
takes the cache's lock first (image.cache_lock), so a test that needs an image that is
being built here waits for it, then finds it built; one that is already cached costs a
lookup.

``python -m netinject.vm.prewarm [--releases] [--python-trees]``: the bookworm base trees
(ifupdown first: the first tests that boot use it; a base takes about a minute, a
variant seconds), then every bookworm variant and the two release images scripts/test.sh
boots (CI_RELEASE_VARIANTS), then with
``--python-trees`` the minimal trees of Debian 11's and 13's Python (vm.pytree), then with
``--releases`` the other Debian 11 and 13 variants of the release boots. A failure is printed
and the next build goes on: the test that needs the image builds it again and fails
with the error itself.
"""

from __future__ import annotations

import argparse
import sys

from .image import (
    RELEASES,
    STACKS,
    SUITE,
    VARIANTS,
    ImageBuildError,
    build_base,
    build_variant,
)
from .progress import Progress
from .pytree import build_python_tree

# The release boots' variants (tests/test_e2e_releases.py): each stack's inject image,
# and the stock image of the legacy-image scenario.
RELEASE_VARIANTS = ("inject", *(f"inject-{s}" for s in STACKS), "dhcp")
# The release boots that scripts/test.sh runs (the others are marked `releases`, to keep
# CI within its hour): one stack on each other release, each where that release differed
# most. Debian 11's netplan 0.101 (refuses `to: default`) under Python 3.9 and systemd
# 247; Debian 13's systemd-networkd 257 under Python 3.13 (the agent not precompiled:
# the launcher's real-time priority; hashlib's _sha2).
CI_RELEASE_VARIANTS = ("inject-netplan@bullseye", "inject-networkd@trixie")


def plan(python_trees: bool, releases: bool) -> list[tuple[str, str]]:
    """(kind, name) in build order: ("base", RECIPE), ("variant", NAME[@RELEASE]) or
    ("python", RELEASE)."""
    steps = [("base", r) for r in dict.fromkeys(VARIANTS.values())]
    steps += [("variant", v) for v in (*VARIANTS, *CI_RELEASE_VARIANTS)]
    if python_trees:
        steps += [("python", r) for r in RELEASES if r != SUITE]
    if releases:
        steps += [("variant", f"{v}@{r}") for r in RELEASES if r != SUITE
                  for v in RELEASE_VARIANTS if f"{v}@{r}" not in CI_RELEASE_VARIANTS]
    return steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m netinject.vm.prewarm",
        description="Build the test images ahead, into the cache (~/.cache/netinject or "
                    "NETINJECT_CACHE), one at a time; cached ones are skipped.")
    ap.add_argument("--python-trees", action="store_true",
                    help="also Debian 11's and 13's Python trees (the agent's tests on them)")
    ap.add_argument("--releases", action="store_true",
                    help="also the Debian 11 and 13 images of the release boots")
    args = ap.parse_args(argv)
    progress = Progress()
    failed = 0
    for kind, name in plan(args.python_trees, args.releases):
        try:
            if kind == "base":
                build_base(progress, recipe=name)
            elif kind == "variant":
                build_variant(name, progress)
            else:
                build_python_tree(name, progress)
        except (ImageBuildError, OSError) as exc:
            failed += 1
            progress(f"prewarm: {kind} {name} failed (the test that needs it will build "
                     f"it again): {exc}")
    progress(f"prewarm: done, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
