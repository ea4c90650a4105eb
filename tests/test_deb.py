"""The guest agent as a Debian package (netinject guest-bundle --deb): its fields and
files, lintian, and dpkg's install, reinstall, remove and purge in a chroot of the test
bed's Debian image (an overlay over the cached base tree: tests/helpers/deb_chroot.py),
each compared with the tree before, as piuparts does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers.deb_chroot import diff, run_steps
from netinject import deb
from netinject.cli import main
from netinject.guest.contract import VERSION


def _field(path: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(path), name], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_the_package_ships_the_bundle_and_runs_its_installer(tmp_path: Path) -> None:
    out = tmp_path / "netinject-guest_all.deb"
    assert main(["guest-bundle", "--deb", str(out)]) == 0
    assert not (tmp_path / "netinject-guest.pyz").exists()  # --deb alone: the .deb only
    assert (_field(out, "Package"), _field(out, "Version"), _field(out, "Architecture"),
            _field(out, "Depends")) == ("netinject-guest", VERSION, "all", "python3 (>= 3.9)")
    listing = subprocess.run(["dpkg-deb", "--contents", str(out)], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    files = {line.split()[-1]: (line.split()[0], line.split()[1]) for line in listing}
    assert {p for p, (mode, _) in files.items() if not mode.startswith("d")} == {
        "./usr/share/netinject-guest/netinject-guest.pyz",
        "./usr/share/doc/netinject-guest/copyright",
        "./usr/share/doc/netinject-guest/changelog.gz"}
    assert {owner for _, owner in files.values()} == {"root/root"}
    scripts = tmp_path / "control"
    subprocess.run(["dpkg-deb", "--control", str(out), str(scripts)], check=True)
    assert "python3 -I /usr/share/netinject-guest/netinject-guest.pyz install --root /" in \
        (scripts / "postinst").read_text()
    assert "uninstall --root /" in (scripts / "prerm").read_text()
    again = tmp_path / "again.deb"
    assert main(["guest-bundle", "--deb", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()  # reproducible


def test_the_maintainer_comes_from_the_option_or_debemail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBFULLNAME", "Ada Operator")
    monkeypatch.setenv("DEBEMAIL", "ada@cloud.example")
    out = tmp_path / "a.deb"
    assert main(["guest-bundle", "--deb", str(out)]) == 0
    assert _field(out, "Maintainer") == "Ada Operator <ada@cloud.example>"
    assert main(["guest-bundle", "--deb", str(out), "--maintainer",
                 "Images Team <images@cloud.example>"]) == 0
    assert _field(out, "Maintainer") == "Images Team <images@cloud.example>"


@pytest.mark.parametrize(("args", "says"), [
    (["--maintainer", "x\nPackage: evil <a@b.c>"], "--maintainer: 'x\\nPackage: evil <a@b.c>' "
                                                   "is not 'Full Name <user@domain>'"),
    (["--maintainer", "Root <root>"], "is not 'Full Name <user@domain>'"),
    (["--maintainer", "A B <a@b.example>", "--out", "x.pyz"], "--maintainer: only with --deb"),
])
def test_bad_input_is_refused_before_anything_is_written(
        args: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    deb_args = [] if "--out" in args else ["--deb", "out.deb"]
    assert main(["guest-bundle", *deb_args, *args]) == 2
    assert says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_lintian_finds_nothing(tmp_path: Path) -> None:
    """lintian, pedantic and informational tags included: no tag at all."""
    out = deb.build(tmp_path / "netinject-guest_all.deb")
    done = subprocess.run(["lintian", "--info", "--pedantic", "--display-info", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    tags = [line for line in (done.stdout + done.stderr).splitlines()
            if line[:2] in ("E:", "W:", "I:", "P:", "X:")]
    assert (done.returncode, tags) == (0, []), done.stdout + done.stderr


@pytest.mark.e2e
@pytest.mark.root
@pytest.mark.parametrize("release", [
    pytest.param("bullseye", marks=pytest.mark.releases), "bookworm",
    pytest.param("trixie", marks=pytest.mark.releases)])
def test_install_reinstall_remove_purge_in_a_chroot_of_the_image(
        tmp_path: Path, release: str) -> None:
    """dpkg -i installs the boot service as the bundle's installer does (unit enabled,
    the image's stack recorded, the init script for an image without systemd, which
    runs); installing again keeps it; dpkg -r leaves the tree as before the install
    but for the agent's log, and -P exactly as before, after a booted instance left its
    records (piuparts' sequence, with its diff of the tree). In a chroot of each Debian
    release's test-bed image (11, 12, 13), with its own dpkg and Python."""
    from netinject.vm.image import build_base
    from netinject.vm.progress import Progress
    from netinject.vm.pytree import RELEASES

    # (the ifupdown base has python3: cloud-init's)
    base = build_base(Progress(), recipe="ifupdown", release=release)
    tag = "cpython-" + RELEASES[release].replace(".", "")
    out = deb.build(tmp_path / "netinject-guest_all.deb")
    steps = [
        "dpkg -i /tmp/netinject-guest.deb",                       # 1 install
        "dpkg -i /tmp/netinject-guest.deb",                       # 2 again (upgrade path)
        "/etc/init.d/netinject start; echo rc=$?; cat /var/log/netinject.log",  # 3 no systemd
        "dpkg -r netinject-guest",                                # 4 remove
        "dpkg -i /tmp/netinject-guest.deb && mkdir -p /var/lib/netinject && "
        "echo recorded > /var/lib/netinject/state",               # 5 a booted instance
        "dpkg -P netinject-guest",                                # 6 purge
    ]
    report = run_steps(base.root, out, steps)
    for i, step in enumerate(report["steps"]):
        assert step["rc"] == 0, (i + 1, step)
    snaps = report["snapshots"]
    installed = diff(snaps[0], snaps[1])
    for path in ("usr/sbin/netinject-guest", "usr/lib/netinject/netinject_guest.py",
                 "etc/netinject/stack", "etc/init.d/netinject",
                 "usr/share/netinject-guest/netinject-guest.pyz"):
        was, now = installed[path]
        assert was is None, path
        assert now is not None, path
    assert any(p.endswith("multi-user.target.wants/netinject.service") for p in installed)
    # Installing again changes nothing but the agent's bytecode (its pyc records the
    # rewritten source's mtime).
    assert set(diff(snaps[1], snaps[2])) <= {
        f"usr/lib/netinject/__pycache__/netinject_guest.{tag}.pyc"}
    assert f"usr/lib/netinject/__pycache__/netinject_guest.{tag}.pyc" in installed
    assert "rc=0" in report["steps"][2]["output"]
    assert "outcome=" in report["steps"][2]["output"]  # the agent ran, said how it ended
    # Remove leaves only what the agent's run recorded (its log), as dpkg -r keeps a
    # package's data; purge removes that too.
    assert set(diff(snaps[0], snaps[4])) == {"var/log/netinject.log"}
    assert diff(snaps[0], snaps[6]) == {}, "purge left the image changed"


@pytest.mark.e2e
@pytest.mark.root
def test_an_image_without_python3_gets_no_boot_service_and_dpkg_says_why(
        tmp_path: Path) -> None:
    """An image with python3-minimal only (the test bed's python3 package removed in
    the chroot; the boot agent runs on the minimal interpreter, the metadata path needs
    the full python3's json and http modules): dpkg -i unpacks, says the dependency is
    missing and leaves the package unconfigured: postinst did not run, so no boot
    service is installed; dpkg -r then leaves the tree as before. (apt install
    ./netinject-guest_all.deb would pull python3 in; no network in tests.)"""
    from netinject.vm.image import build_base
    from netinject.vm.progress import Progress

    base = build_base(Progress(), recipe="networkd")
    out = deb.build(tmp_path / "netinject-guest_all.deb")
    report = run_steps(base.root, out, ["dpkg --purge --force-depends python3",
                                        "dpkg -i /tmp/netinject-guest.deb",
                                        "dpkg -r netinject-guest"])
    _, first, second = report["steps"]
    assert report["steps"][0]["rc"] == 0, report["steps"][0]
    assert first["rc"] == 1
    assert "netinject-guest depends on python3 (>= 3.9)" in first["output"]
    snaps = report["snapshots"][1:]
    assert set(diff(snaps[0], snaps[1])) <= {
        "usr/share/netinject-guest", "usr/share/netinject-guest/netinject-guest.pyz",
        "usr/share/doc/netinject-guest",
        "usr/share/doc/netinject-guest/copyright",
        "usr/share/doc/netinject-guest/changelog.gz"}
    assert second["rc"] == 0, second
    assert diff(snaps[0], snaps[2]) == {}
