"""Command-line behaviour that needs no guest: help, usage errors, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from netinject.cli import main


@pytest.mark.parametrize("argv", [["--help"], ["render", "--help"], ["drive", "--help"],
                                  ["hotplug", "attach", "--help"], ["bench", "boot", "--help"],
                                  ["image", "build", "--help"], ["demo", "--help"],
                                  ["vendordata", "serve", "--help"],
                                  ["bench", "vendordata", "--help"]])
def test_help_answers(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: netinject" in capsys.readouterr().out


def test_unknown_scenario_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "boot", "--scenarios", "inject,warp-speed"]) == 2
    err = capsys.readouterr().err
    assert "--scenarios: unknown scenario 'warp-speed'" in err
    assert "dhcp-timeout" in err  # the known ones are listed
    assert "NAME@RELEASE" in err


@pytest.mark.parametrize(("name", "says"), [
    ("inject@jessie", "unknown release 'jessie' in scenario 'inject@jessie'; known: "
                      "bullseye, bookworm, trixie"),
    ("nova-vendordata@trixie", "nova-vendordata runs on the OpenStack peer's bookworm "
                               "image only"),
    ("warp@trixie", "unknown scenario 'warp'"),
])
def test_a_scenario_on_an_unknown_release_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], name: str, says: str) -> None:
    assert main(["bench", "boot", "--scenarios", f"inject@trixie,{name}"]) == 2
    assert says in capsys.readouterr().err


def test_an_image_of_an_unknown_release_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "build", "--variant", "inject@buster", "--out", str(tmp_path)]) == 2
    assert "--variant: unknown release 'buster' in 'inject@buster'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_unknown_variant_is_a_usage_error(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "build", "--variant", "gentoo", "--out", str(tmp_path)]) == 2
    assert "unknown variant 'gentoo'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["render", "x.json", "--format", "eni,ifcfg", "--print"])
    assert exc.value.code == 2
    assert "unknown format(s) 'ifcfg'" in capsys.readouterr().err


@pytest.mark.parametrize("auth", [[], ["--no-auth"]])
def test_vendordata_serve_refuses_an_unknown_cloud_before_listening(
        auth: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))
    (tmp_path / "clouds.yaml").write_text("clouds: {}\n")
    assert main(["vendordata", "serve", "--cloud", "nope", *auth]) == 2
    assert "cloud 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("listen", ["nope", "127.0.0.1:0", "127.0.0.1:99999", "a b:1"])
def test_vendordata_serve_refuses_a_bad_listen_address(
        listen: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vendordata", "serve", "--cloud", "x", "--listen", listen]) == 2
    assert "--listen" in capsys.readouterr().err


def test_hotplug_over_qmp_needs_the_agent_socket(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--qga is optional only with --libvirt (the agent is then reached through libvirt)."""
    doc = Path(__file__).parent / "cases/seed/instance.json"
    assert main(["hotplug", "detach", str(doc), "--port-id", "x",
                 "--qmp", str(tmp_path / "qmp.sock")]) == 2
    assert "--qmp needs --qga" in capsys.readouterr().err


def test_hotplug_with_an_unreachable_libvirt_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = Path(__file__).parent / "cases/seed/instance.json"
    uri = f"qemu:///system?socket={tmp_path / 'no-such-sock'}"
    assert main(["hotplug", "detach", str(doc), "--port-id", "x", "--libvirt", "vm1",
                 "--libvirt-uri", uri]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"netinject: error: libvirt {uri}: ")
    assert "Traceback" not in err
