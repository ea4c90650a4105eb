"""Paths inside an image tree (`netinject-guest install/uninstall --root IMAGE`, issue 20
A1): every path is looked up inside the image as a chroot would (paths.resolve_in_root),
so an image's symlink can never take a write, a read or a removal onto the build host.

The lookup is checked against the kernel itself (a child chrooted into the same trees),
and the installer against image trees whose directories lead to a sentinel "host"
directory outside the image: it must refuse (exit 2, nothing written anywhere) or write
inside the image, never into the sentinel. Each installer test here failed before the
fix (the sentinel was written to, or emptied).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from helpers.fuzz_image import tree_state
from helpers.guest import BUNDLE, GUEST_PYTHON, GUEST_VERSION
from netinject.guest.contract import AgentError
from netinject.guest.paths import MAX_LINKS, resolve_in_root

# -- the lookup ----------------------------------------------------------------------------


def _tree(root: Path, spec: dict[str, str | None]) -> Path:
    """Make ``root`` from {path: None for a directory, '->target' for a symlink, else a
    file's text}, parents first."""
    for rel, what in spec.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if what is None:
            p.mkdir()
        elif what.startswith("->"):
            p.symlink_to(what[2:])
        else:
            p.write_text(what)
    return root


def test_merged_usr_links_resolve_inside_the_image(tmp_path: Path) -> None:
    img = _tree(tmp_path / "img", {"usr/lib/systemd/systemd": "x", "usr/sbin": None,
                                   "lib": "->usr/lib", "sbin": "->/usr/sbin",
                                   "usr/sbin/init": "->../lib/systemd/systemd"})
    assert resolve_in_root(str(img), "lib/systemd/system/x.service", follow_last=False) \
        == f"{img}/usr/lib/systemd/system/x.service"
    # Debian's /sbin/init -> /lib/systemd/systemd, behind an absolute /sbin link too.
    assert resolve_in_root(str(img), "sbin/init") == f"{img}/usr/lib/systemd/systemd"
    assert resolve_in_root(str(img), "sbin/init", follow_last=False) == f"{img}/usr/sbin/init"
    assert resolve_in_root(str(img) + "/", "/lib/") == f"{img}/usr/lib"
    assert resolve_in_root(str(img), "") == str(img)


def test_absolute_links_start_again_at_the_image_root(tmp_path: Path) -> None:
    host = _tree(tmp_path / "host", {"etc/udev/rules.d": None})
    img = _tree(tmp_path / "img", {"etc/udev": None, f"{host}/etc/udev/rules.d".lstrip("/"):
                                   None, "etc/udev/rules.d": f"->{host}/etc/udev/rules.d"})
    # Not the host's directory the link names: the image's own directory of that name.
    assert resolve_in_root(str(img), "etc/udev/rules.d/75-x.rules", follow_last=False) \
        == f"{img}{host}/etc/udev/rules.d/75-x.rules"


def test_dot_dot_never_climbs_above_the_image_root(tmp_path: Path) -> None:
    img = _tree(tmp_path / "img", {"usr/lib": None, "etc": None,
                                   "etc/up": "->" + "../" * 30 + "usr/lib"})
    assert resolve_in_root(str(img), "etc/up/x", follow_last=False) == f"{img}/usr/lib/x"
    assert resolve_in_root(str(img), "../../etc/../../usr") == f"{img}/usr"


@pytest.mark.parametrize("links", [
    {"a": "->a"}, {"a": "->b", "b": "->a"}, {"a": "->/a/x"}, {"a": "->./a"},
    # MAX_LINKS + 1 links in a chain: too many, as for the kernel.
    {f"l{i}": f"->l{i + 1}" for i in range(MAX_LINKS + 1)} | {f"l{MAX_LINKS + 1}": None},
])
def test_loops_are_refused(links: dict[str, str | None], tmp_path: Path) -> None:
    img = _tree(tmp_path / "img", links)
    first = next(iter(links))
    with pytest.raises(AgentError, match="too many levels of symbolic links"):
        resolve_in_root(str(img), f"{first}/x", follow_last=False)


def test_a_link_to_a_host_directory_is_refused_not_followed(tmp_path: Path) -> None:
    """Re-rooted, a link to the build host's directory leads to nothing in the image:
    refused (the chroot would fail too), not created there and not followed out."""
    host = _tree(tmp_path / "host", {"rules.d": None})
    img = _tree(tmp_path / "img", {"etc/udev": None, "etc/udev/rules.d": f"->{host}/rules.d",
                                   "etc/up": "->../../../../../../" + str(host)[1:]})
    for rel in ("etc/udev/rules.d/75-x.rules", "etc/up/rules.d/y"):
        with pytest.raises(AgentError, match="leads to nothing in the image"):
            resolve_in_root(str(img), rel, follow_last=False)
    # The final name itself is not followed when asked so: that link is what is there.
    assert resolve_in_root(str(img), "etc/udev/rules.d", follow_last=False) \
        == f"{img}/etc/udev/rules.d"


def test_missing_names_are_kept_and_a_file_on_the_way_is_refused(tmp_path: Path) -> None:
    img = _tree(tmp_path / "img", {"etc/hostname": "x", "lib": "->usr/lib", "usr/lib": None})
    assert resolve_in_root(str(img), "lib/new/dir/f") == f"{img}/usr/lib/new/dir/f"
    with pytest.raises(AgentError, match="/etc/hostname is not a directory"):
        resolve_in_root(str(img), "etc/hostname/x")
    with pytest.raises(AgentError, match="does not exist"):
        resolve_in_root(str(img), "usr/missing/../lib")


# The kernel as the oracle: random trees of directories, files and symlinks (absolute,
# relative, climbing, looping, dangling, with '.', '..' and trailing '/'), each looked up
# both in a chroot and by resolve_in_root.
NAMES = ["a", "b", "c"]


def _random_tree(rng: random.Random, root: Path) -> None:
    dirs = [""]
    for _ in range(rng.randint(3, 14)):
        parent = rng.choice(dirs)
        path = f"{parent}/{rng.choice(NAMES)}".lstrip("/")
        if os.path.lexists(root / path):
            continue
        roll = rng.random()
        if roll < 0.4:
            (root / path).mkdir()
            dirs.append(path)
        elif roll < 0.55:
            (root / path).write_text("f")
        else:
            parts = [rng.choice([*NAMES, "..", ".", "..", ""]) for _ in range(rng.randint(1, 4))]
            target = "/".join(parts) or "."
            if rng.random() < 0.4:
                target = "/" + target
            (root / path).symlink_to(target)


def _kernel_lookups(root: Path, lookups: list[tuple[str, bool]]) -> list[object]:
    """For each (path, follow_last): (st_dev, st_ino) of what the kernel opens in a
    chroot at ``root``, or the errno."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.close(r)
            os.chroot(root)
            os.chdir("/")
            out: list[object] = []
            for rel, follow in lookups:
                flags = os.O_PATH | (0 if follow else os.O_NOFOLLOW)
                try:
                    fd = os.open("/" + rel, flags)
                except OSError as exc:
                    out.append(exc.errno)
                    continue
                st = os.fstat(fd)
                os.close(fd)
                out.append([st.st_dev, st.st_ino])
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    result: list[object] = json.loads(data)
    return result


def test_lookups_agree_with_the_kernel_in_a_chroot(tmp_path: Path) -> None:
    rng = random.Random(20)
    checked = found = 0
    for n in range(150):
        root = tmp_path / f"t{n}"
        root.mkdir()
        _random_tree(rng, root)
        lookups = []
        for _ in range(12):
            parts = [rng.choice([*NAMES, *NAMES, "..", "."]) for _ in range(rng.randint(1, 4))]
            rel = "/".join(parts) + ("/" if rng.random() < 0.1 else "")
            lookups.append((rel, rng.random() < 0.6))
        for (rel, follow), kernel in zip(lookups, _kernel_lookups(root, lookups), strict=True):
            checked += 1
            try:
                ours: str | None = resolve_in_root(str(root), rel, follow)
            except AgentError:
                ours = None
            where = (n, rel, follow, kernel, ours)
            if isinstance(kernel, list):
                found += 1
                assert ours is not None, where
                st = os.lstat(ours)
                assert [st.st_dev, st.st_ino] == kernel, where
            else:  # the kernel found nothing: ours is refused, or names nothing there
                assert ours is None or not os.path.lexists(ours), where
    assert checked == 1800
    assert found > 300  # (and the trees are not all dead ends)


# -- the installer -------------------------------------------------------------------------

GENERATOR = """\
ACTION!="add", GOTO="persistent_net_generator_end"
SUBSYSTEM!="net", GOTO="persistent_net_generator_end"
ENV{MATCHADDR}=="?[2367abef]:*",        ENV{MATCHADDR}=""
ENV{MATCHADDR}=="00:00:00:00:00:00",    ENV{MATCHADDR}=""
LABEL="globally_administered_whitelist"
RUN+="write_net_rules"
LABEL="persistent_net_generator_end"
"""
PY = "python{}.{}".format(*GUEST_VERSION)  # the bundle's interpreter: install precompiles for it
PYC = "netinject_guest.cpython-{}{}.pyc".format(*GUEST_VERSION)


def _bundle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GUEST_PYTHON, "-I", "-S", str(BUNDLE), *args],
                          capture_output=True, text=True, check=False, timeout=60)


def _image(root: Path, init: str = "systemd") -> Path:
    """A Debian-shaped ifupdown image with the persistent-net generator rule (so install
    also writes the generator override) and this Python (so it precompiles)."""
    for d in ("sbin", "lib/systemd/system", "etc/init.d", f"usr/lib/{PY}", "lib/udev/rules.d",
              "etc/systemd/system/multi-user.target.wants"):
        (root / d).mkdir(parents=True)
    if init == "systemd":
        os.symlink("/lib/systemd/systemd", root / "sbin/init")
    else:
        (root / "sbin/init").write_bytes(b"\x7fELF sysvinit")
    (root / "sbin/ifup").write_bytes(b"\x7fELF ifup")
    os.symlink("/lib/systemd/system/networking.service",
               root / "etc/systemd/system/multi-user.target.wants/networking.service")
    (root / "lib/udev/rules.d/75-persistent-net-generator.rules").write_text(GENERATOR)
    return root


def _divert(img: Path, rel: str, to: Path) -> None:
    """Make the image's directory ``rel`` a symlink to ``to`` (absolute), as an image
    built on the host with a link to the host's directory has it."""
    d = img / rel
    if d.is_dir() and not d.is_symlink():
        for p in sorted(d.rglob("*"), reverse=True):
            p.unlink() if p.is_symlink() or not p.is_dir() else p.rmdir()
        d.rmdir()
    d.parent.mkdir(parents=True, exist_ok=True)
    to.mkdir(parents=True, exist_ok=True)
    d.symlink_to(to)


INSTALL_DIRS = [  # every directory install writes to (the systemd image's, then rcS.d)
    ("usr/lib/netinject", "systemd"), ("usr/lib/netinject/__pycache__", "systemd"),
    ("usr/sbin", "systemd"), ("lib/systemd/system", "systemd"), ("etc/init.d", "systemd"),
    ("etc/netinject", "systemd"), ("var/lib/netinject", "systemd"),
    ("etc/systemd/system/multi-user.target.wants", "systemd"),
    ("etc/udev/rules.d", "systemd"), ("etc/rcS.d", "sysvinit")]


@pytest.mark.parametrize(("rel", "init"), INSTALL_DIRS)
def test_install_refuses_a_directory_linked_to_the_hosts(rel: str, init: str,
                                                         tmp_path: Path) -> None:
    """The image's directory is a link to the host's (here a sentinel standing in for
    it): refused with exit 2 before anything is written, in the image or on the host."""
    img = _image(tmp_path / "img", init)
    host = tmp_path / "host"
    _divert(img, rel, host / rel)
    (host / rel / "keep").write_text("the host's\n")
    before, host_before = tree_state(img), tree_state(host)
    done = _bundle("install", "--root", str(img))
    assert done.returncode == 2, done
    assert done.stderr.startswith("netinject-guest install: error: /"), done.stderr
    assert "leads to nothing in the image" in done.stderr
    assert "Traceback" not in done.stderr
    assert tree_state(host) == host_before
    assert tree_state(img) == before  # nothing written


def test_install_refuses_the_generator_fix_into_the_hosts_rules(tmp_path: Path) -> None:
    """The audit's example: etc/udev/rules.d links to the host's rules directory and the
    image ships its own persistent-net generator rule (with RUN+=). Before the fix the
    Debian fix copied that rule into the host's directory."""
    img = _image(tmp_path / "img")
    host_rules = tmp_path / "host/etc/udev/rules.d"
    _divert(img, "etc/udev/rules.d", host_rules)
    done = _bundle("install", "--root", str(img))
    assert done.returncode == 2
    assert "/etc/udev/rules.d/75-persistent-net-generator.rules: the symlink " \
           f"/etc/udev/rules.d -> {host_rules} leads to nothing in the image" in done.stderr
    assert list(host_rules.iterdir()) == []
    assert not (img / "usr/sbin/netinject-guest").exists()


def test_links_that_climb_out_are_followed_inside_the_image_only(tmp_path: Path) -> None:
    """A relative link climbing above the image's root stops at it (as in the booted
    guest): here that lands on a directory the image has, so install works and writes
    there. Followed on the host, the same link reaches the sentinel."""
    img = _image(tmp_path / "img")
    host = tmp_path / "host"
    depth = len(img.parts) - 1
    climb = "../" * (depth + 5) + str(host)[1:]
    for rel in ("lib/systemd/system", "etc/init.d"):
        (host / rel).mkdir(parents=True)
        inside = img / str(host)[1:] / rel
        inside.mkdir(parents=True, exist_ok=True)
        _divert(img, rel, host / rel)
        (img / rel).unlink()
        (img / rel).symlink_to("../" * rel.count("/") + climb + "/" + rel)
    host_before = tree_state(host)
    done = _bundle("install", "--root", str(img))
    assert done.returncode == 0, done.stderr
    assert tree_state(host) == host_before
    inside = img / str(host)[1:]
    assert (inside / "lib/systemd/system/netinject.service").is_file()
    assert (inside / "etc/init.d/netinject").is_file()
    done = _bundle("uninstall", "--root", str(img))
    assert done.returncode == 0, done.stderr
    assert not (inside / "lib/systemd/system/netinject.service").exists()
    assert tree_state(host) == host_before


def test_merged_usr_image_installs_inside_and_uninstalls_to_the_pristine_tree(
        tmp_path: Path) -> None:
    """Debian's merged-usr layout (lib -> usr/lib, sbin -> usr/sbin; here also an
    absolute /bin -> /usr/bin) is an image's normal shape: detection reads through it
    and every file lands under usr/, inside the image."""
    img = tmp_path / "img"
    for d in ("usr/lib/systemd/system", "usr/sbin", "usr/bin", "etc/init.d", f"usr/lib/{PY}",
              "etc/systemd/system/multi-user.target.wants", "usr/lib/udev/rules.d"):
        (img / d).mkdir(parents=True)
    os.symlink("usr/lib", img / "lib")
    os.symlink("usr/sbin", img / "sbin")
    os.symlink("/usr/bin", img / "bin")
    os.symlink("../lib/systemd/systemd", img / "usr/sbin/init")
    (img / "usr/lib/systemd/systemd").write_bytes(b"\x7fELF systemd")
    os.symlink("/lib/systemd/system/systemd-networkd.service",
               img / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
    (img / "usr/lib/udev/rules.d/75-persistent-net-generator.rules").write_text(GENERATOR)
    pristine = tree_state(img, times=False)
    done = _bundle("install", "--root", str(img))
    assert done.returncode == 0, done.stderr
    assert "network stack: networkd (systemd-networkd.service is enabled)" in done.stdout
    assert "enabled netinject.service (systemd)" in done.stdout
    for rel in ("usr/lib/systemd/system/netinject.service",
                "usr/lib/systemd/system/netinject-announce.service",
                "usr/sbin/netinject-guest", "usr/lib/netinject/netinject_guest.py",
                "etc/udev/rules.d/75-persistent-net-generator.rules"):
        assert (img / rel).is_file(), rel
        assert not (img / rel).is_symlink(), rel
    assert (img / "usr/lib/netinject/__pycache__").is_dir()
    assert tree_state(img)["lib"] == pristine["lib"]  # the link itself is untouched
    assert _bundle("uninstall", "--root", str(img)).returncode == 0
    after = tree_state(img, times=False)
    assert {k: v for k, v in after.items() if k in pristine} == pristine
    assert all(v[0] == "dir" for k, v in after.items() if k not in pristine), after


UNINSTALL_DIRS = ["etc/systemd/system/multi-user.target.wants", "etc/rcS.d",
                  "lib/systemd/system", "etc/init.d", "usr/sbin", "usr/lib/netinject",
                  "usr/lib/netinject/__pycache__", "etc/netinject", "etc/udev/rules.d",
                  "var/lib/netinject"]


@pytest.mark.parametrize("rel", UNINSTALL_DIRS)
def test_uninstall_never_removes_outside_the_image(rel: str, tmp_path: Path) -> None:
    """An installed image whose directory was then made a link to the host's, where
    files with our names (and an empty state directory) lie: uninstall removes nothing
    there; the names it cannot reach in the image are skipped, saying so."""
    img = _image(tmp_path / "img", "sysvinit" if rel == "etc/rcS.d" else "systemd")
    assert _bundle("install", "--root", str(img)).returncode == 0
    host = tmp_path / "host"
    names = {"etc/systemd/system/multi-user.target.wants": ["netinject.service"],
             "etc/rcS.d": ["S01netinject"], "lib/systemd/system": ["netinject.service"],
             "etc/init.d": ["netinject"], "usr/sbin": ["netinject-guest"],
             "usr/lib/netinject": ["netinject_guest.py", "__pycache__/"],
             "usr/lib/netinject/__pycache__": [PYC],
             "etc/netinject": ["stack"], "var/lib/netinject": ["backup/"],
             "etc/udev/rules.d": ["75-persistent-net-generator.rules"]}[rel]
    _divert(img, rel, host / rel)
    for name in names:
        if name.endswith("/"):
            (host / rel / name).mkdir()
        else:
            (host / rel / name).write_text('GOTO="globally_administered_whitelist"\n')
    host_before = tree_state(host)
    done = _bundle("uninstall", "--root", str(img))
    assert done.returncode == 0, done.stderr
    assert tree_state(host) == host_before
    if rel in ("usr/lib/netinject/__pycache__", "etc/udev/rules.d"):
        # Found by looking in the image (its compiled files, an override of ours): the
        # image has none there, so there is nothing to skip either.
        assert f"/{rel}/" not in done.stdout
    elif rel != "var/lib/netinject":
        assert f"skipped /{rel}/" in done.stdout
    assert "removed /usr/lib/netinject/netinject_guest.py" in done.stdout \
        or rel.startswith("usr/lib/netinject")


@pytest.mark.parametrize("rel", ["etc/init.d", "usr/sbin"])
def test_loops_are_refused_before_anything_is_written(rel: str, tmp_path: Path) -> None:
    """The image's directory links to the sentinel's path, where the image has a link
    that names itself: a loop inside the image (followed on the host, the sentinel)."""
    img = _image(tmp_path / "img")
    host = tmp_path / "host"
    _divert(img, rel, host / rel)
    inside = img / str(host / rel)[1:]
    inside.parent.mkdir(parents=True)
    inside.symlink_to(host / rel)
    before, host_before = tree_state(img), tree_state(host)
    done = _bundle("install", "--root", str(img))
    assert done.returncode == 2
    assert "too many levels of symbolic links (a loop)" in done.stderr
    assert tree_state(img) == before
    assert tree_state(host) == host_before


@pytest.mark.parametrize("what", ["directory", "fifo"])
def test_something_in_the_way_is_refused_without_a_traceback(what: str,
                                                             tmp_path: Path) -> None:
    """A directory or FIFO where install puts a file (or its staging name): exit 2 with
    a message before anything is written (before the fix: a traceback, after writing
    half the files)."""
    img = _image(tmp_path / "img")
    (img / "etc/init.d").mkdir(exist_ok=True)
    where = img / "etc/init.d/netinject" if what == "directory" \
        else img / "etc/init.d/.netinject.netinject-tmp"
    where.mkdir() if what == "directory" else os.mkfifo(where)
    before = tree_state(img)
    done = _bundle("install", "--root", str(img))
    assert done.returncode == 2, done
    assert done.stderr.startswith("netinject-guest install: error: ")
    assert f"a {what if what == 'directory' else 'special file'} is in the way" in done.stderr
    assert "Traceback" not in done.stderr
    assert tree_state(img) == before


def test_an_image_root_that_is_not_a_directory_is_an_error_not_a_traceback(
        tmp_path: Path) -> None:
    (tmp_path / "img").write_text("not a tree")
    for cmd in ("install", "uninstall"):
        done = _bundle(cmd, "--root", str(tmp_path / "img"), *(
            ["--stack", "ifupdown"] if cmd == "install" else []))
        assert (done.returncode, done.stdout) == (2, ""), done
        assert done.stderr == f"netinject-guest {cmd}: error: --root {tmp_path}/img is not " \
                              "a directory\n"
    assert (tmp_path / "img").read_text() == "not a tree"
