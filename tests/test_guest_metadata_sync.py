"""``netinject-guest sync``: the joined agent, on a guest tree whose first boot it
configured from a real drive, fetching vendor_data2.json from a real HTTP server on
127.0.0.1 that serves what netinject's own vendordata service builds (document.payload)
and, for the faults, what a broken metadata path sends. Files only (--root)."""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from helpers.guest import (
    AGENT,
    GUEST_PYTHON,
    agent_log,
    instance_doc,
    make_drive,
    make_guest,
    run_agent,
    snapshot,
)
from netinject.guest import contract
from netinject.openstack.document import payload
from netinject.sources.neutron import parse_document

DOC = "multi-nic-reordered"
OTHER_UUID = "0b5e5f1c-51f3-4c41-9f4e-5c1a7d0e9b11"
NEW_PORT = {
    "id": "5d6e7f80-9a1b-4c2d-8e3f-405162738495",
    "mac_address": "fa:16:3e:00:00:09",
    "network_id": "7d2e3f4a-5b6c-4d7e-8f90-a1b2c3d4e5f6",
    "fixed_ips": [{"subnet_id": "8e3f4a5b-6c7d-4e8f-9a01-b2c3d4e5f6a7",
                   "ip_address": "198.51.100.77"}],
}
NETWORKD = "etc/systemd/network/10-netinject-"


def answer(doc: Any) -> bytes:
    """vendor_data2.json as nova serves it: every target's answer under its name."""
    return json.dumps({"cloud-init": {}, "netinject": payload(parse_document(doc).instance)}
                      ).encode()


Reply = Callable[[BaseHTTPRequestHandler], None]


def body(data: bytes, status: int = 200) -> Reply:
    def reply(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return reply


class Server:
    """A metadata API on 127.0.0.1: ``replies`` answers the n-th GET (the last one
    repeats); ``paths`` records what was asked."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                n = len(server.paths)
                server.paths.append(self.path)
                server.replies[min(n, len(server.replies) - 1)](self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def metadata_url(server: Server, reply: Callable[[], Reply] | None) -> str:
    """The server's URL, answering with ``reply``; None: a port nothing listens on."""
    if reply is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"http://127.0.0.1:{s.getsockname()[1]}"
    server.replies = [reply()]
    return server.url


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.close()


# Booted trees by (document, stack), made once per worker and copied for each test (cp -a
# keeps modes, links and the drive's holes): the first boot is the same every time.
_BOOTED: dict[tuple[str, str], Path] = {}
_BOOTED_DIR = tempfile.TemporaryDirectory(prefix="netinject-booted-")


def booted(tmp_path: Path, doc: Any, stack: str = "networkd") -> Path:
    """A guest tree whose first boot the agent configured from netinject's drive."""
    key = (json.dumps(doc, sort_keys=True), stack)
    template = _BOOTED.get(key)
    if template is None:
        where = Path(_BOOTED_DIR.name) / str(len(_BOOTED))
        where.mkdir()
        template = make_guest(where / "root", doc, make_drive(where / "config.img", doc))
        (template / "etc/netinject").mkdir(parents=True)
        (template / "etc/netinject/stack").write_text(stack + "\n")
        assert run_agent(template).returncode == 0
        result = contract.parse_result(agent_log(template))
        assert result is not None
        assert result["outcome"] == "installed", agent_log(template)
        _BOOTED[key] = template
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", "--sparse=always", str(template), str(root)], check=True)
    return root


def sync(root: Path, url: str, *args: str, timeout: float = 120
         ) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", str(AGENT), "sync", "--root", str(root),
                           "--metadata-url", url, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    result = contract.parse_result(done.stdout)
    assert result is not None, (done.stdout, done.stderr)
    return done, result


def changed_files(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
            and not k.startswith(("var/lib/netinject", "run/netinject"))}


def subnet_change(doc: Any, dns: bool = False) -> Any:
    """Subnet 192.0.2.0/24 (eth2's) gets a new host route (``dns``: and DNS servers,
    which the renderer puts on the first NIC, eth0), its network a new MTU."""
    new = copy.deepcopy(doc)
    if dns:
        new["subnets"][0]["dns_nameservers"] = ["192.0.2.99"]
    new["subnets"][0]["host_routes"] = [{"destination": "10.99.0.0/16",
                                         "nexthop": "192.0.2.254"}]
    new["networks"][0]["mtu"] = 1400
    return new


def test_a_subnet_change_reaches_only_its_nics_files(server: Server, tmp_path: Path) -> None:
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc)
    server.replies = [body(answer(subnet_change(doc)))]
    before = snapshot(root)
    done, result = sync(root, server.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["outcome"] == "applied", result
    assert result["changed"] == "eth2"
    assert "added" not in result
    assert "removed" not in result
    assert changed_files(before, snapshot(root)) == {NETWORKD + "eth2.network"}
    text = (root / (NETWORKD + "eth2.network")).read_text()
    assert "10.99.0.0/16" in text
    assert "MTUBytes=1400" in text
    assert server.paths == ["/openstack/latest/vendor_data2.json"]
    # The same answer again: nothing to change, nothing touched (not even recorded;
    # only the mark in /run that this answer is the newest one taken: mark_newest).
    before = snapshot(root, skip=())
    done, result = sync(root, server.url)
    assert (done.returncode, result["outcome"]) == (1, "unchanged"), result
    assert "nothing to change" in result["message"]
    ours = ("var/log/netinject.log", "run/netinject/sync-generation")
    assert {k: v for k, v in snapshot(root, skip=()).items() if k not in ours} == {
        k: v for k, v in before.items() if k not in ours}
    assert snapshot(root)["run/netinject/sync-generation"] != before[
        "run/netinject/sync-generation"]


def test_a_changed_fixed_ip_is_applied(server: Server, tmp_path: Path) -> None:
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc, "ifupdown")
    new = copy.deepcopy(doc)
    new["ports"][1]["fixed_ips"][0]["ip_address"] = "198.51.100.21"  # eth0's
    server.replies = [body(answer(new))]
    before = snapshot(root)
    done, result = sync(root, server.url)
    assert (done.returncode, result["outcome"], result["changed"]) == (0, "applied", "eth0")
    assert changed_files(before, snapshot(root)) == {"etc/network/interfaces"}
    assert "198.51.100.21" in (root / "etc/network/interfaces").read_text()
    # The transaction is recorded, as apply's are.
    assert "outcome=applied" in (root / "var/lib/netinject/apply-status").read_text()


def _cut(h: BaseHTTPRequestHandler) -> None:
    data = answer(instance_doc(DOC))
    h.send_response(200)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data[:len(data) // 2])
    h.wfile.flush()
    h.close_connection = True


def _huge_header(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(contract.BUNDLE_MAX + 1))
    h.end_headers()
    h.close_connection = True


def _huge_stream(h: BaseHTTPRequestHandler) -> None:
    """No Content-Length (HTTP/1.0 style: the body ends when the connection does)."""
    h.protocol_version = "HTTP/1.0"
    h.send_response(200)
    h.end_headers()
    chunk = b" " * 65536
    try:
        for _ in range(contract.BUNDLE_MAX // len(chunk) + 2):
            h.wfile.write(chunk)
    except OSError:
        pass  # (the agent stops reading at the cap)
    h.close_connection = True


def _slow(h: BaseHTTPRequestHandler) -> None:
    time.sleep(3)  # past the agent's read timeout (--timeout 1 in the test; default 5 s)
    with contextlib.suppress(OSError):
        body(b"{}")(h)


def _redirect(h: BaseHTTPRequestHandler) -> None:
    h.send_response(302)
    h.send_header("Location", "http://127.0.0.1:1/elsewhere")
    h.send_header("Content-Length", "0")
    h.end_headers()


def _other_instance() -> bytes:
    return answer(instance_doc(DOC, uuid=OTHER_UUID))


FAULTS: list[tuple[str, Callable[[], Reply] | None, str]] = [
    ("server down", None, "unreachable"),
    ("empty object", lambda: body(b"{}"), "has no 'netinject' payload"),
    ("missing key", lambda: body(b'{"cloud-init": {}}'), "has no 'netinject' payload"),
    ("empty payload", lambda: body(b'{"netinject": {}}'), "has no 'netinject' payload"),
    ("not JSON", lambda: body(b"<html>oops"), "is not JSON"),
    ("cut mid-body", lambda: _cut, "the answer was cut"),
    ("another instance", lambda: body(_other_instance()),
     f"is for instance {OTHER_UUID}, not this machine"),
    ("too large (header)", lambda: _huge_header, "too large"),
    ("too large (stream)", lambda: _huge_stream, "too large"),
    ("HTTP 500", lambda: body(b"{}", 500), "HTTP 500"),
    ("redirect", lambda: _redirect, "HTTP 302"),
    ("slow", lambda: _slow, "timed out"),
]


@pytest.mark.parametrize(("case", "reply", "why"), FAULTS, ids=[f[0] for f in FAULTS])
def test_no_usable_answer_changes_nothing_and_says_why(
        case: str, reply: Callable[[], Reply] | None, why: str, server: Server,
        tmp_path: Path) -> None:
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc)
    url = metadata_url(server, reply)
    before = snapshot(root)
    log_before = agent_log(root)
    done, result = sync(root, url, *(["--timeout", "1"] if case == "slow" else []))
    assert (done.returncode, result["outcome"]) == (1, "unchanged"), result
    assert why in result["message"], result
    assert why in agent_log(root)[len(log_before):]
    assert snapshot(root) == before


def plug(root: Path, name: str, mac: str) -> None:
    """udev's add: the NIC is on the machine (its sysfs link)."""
    (root / "sys/class/net" / name).mkdir(parents=True)
    (root / "sys/class/net" / name / "address").write_text(mac + "\n")


def sync_asking(root: Path, server: Server, *args: str) -> subprocess.Popen[str]:
    """A sync started in the background, once it has sent its first request."""
    proc = subprocess.Popen(
        [GUEST_PYTHON, "-I", "-S", str(AGENT), "sync", "--root", str(root),
         "--metadata-url", server.url, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(300):
        if server.paths:
            break
        time.sleep(0.05)
    return proc


def host_apply(root: Path, doc: Any, txid: str, lock_wait: str) -> dict[str, str]:
    """The host's apply of ``doc``'s bundle (as through qemu-guest-agent): its result."""
    from netinject.hotplug import bundle_for
    from netinject.render import Options

    raw, _ = bundle_for(parse_document(doc).instance, Options())
    done = subprocess.run(
        [GUEST_PYTHON, "-I", "-S", str(AGENT), "apply", "--txid", txid, "--root", str(root),
         "--sysfs", str(root / "sys"), "--lock-wait", lock_wait],
        input=raw, capture_output=True, timeout=60, check=False)
    said = contract.parse_result(done.stdout.decode())
    assert said is not None, done.stdout
    return said


def test_a_hot_plugged_mac_is_waited_for_then_applied(server: Server, tmp_path: Path) -> None:
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc)
    plug(root, "eth3", "fa:16:3e:00:00:09")
    new = copy.deepcopy(doc)
    new["ports"].append(NEW_PORT)
    # nova's cache serves the old answer twice, then the one with the new port.
    server.replies = [body(answer(doc)), body(answer(doc)), body(answer(new))]
    before = snapshot(root)
    started = time.monotonic()
    done, result = sync(root, server.url, "--mac", "FA:16:3E:00:00:09", "--wait-for-mac", "20")
    assert (done.returncode, result["outcome"]) == (0, "applied"), done.stdout + done.stderr
    assert result["added"] == "eth3"
    assert len(server.paths) == 3
    assert 3 <= time.monotonic() - started < 15  # asked after 1 s, then 2 s
    assert changed_files(before, snapshot(root)) == {
        NETWORKD + "eth3.network", NETWORKD + "eth3.link",
        "etc/udev/rules.d/70-persistent-net.rules"}
    assert "fa:16:3e:00:00:09" in (root / "etc/udev/rules.d/70-persistent-net.rules"
                                   ).read_text()
    # udev's add at a later boot: the MAC is configured, nothing is asked.
    done, result = sync(root, server.url, "--mac", "fa:16:3e:00:00:09")
    assert result["outcome"] == "unchanged"
    assert len(server.paths) == 3


def test_a_nic_gone_before_its_config_came_is_not_configured(
        server: Server, tmp_path: Path) -> None:
    """The add trigger of a NIC detached again before the answer carried it: the answer
    that then carries it is not applied (nothing to configure), and nothing waits."""
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc)
    new = copy.deepcopy(doc)
    new["ports"].append(NEW_PORT)
    server.replies = [body(answer(new))]
    before = snapshot(root)
    done, result = sync(root, server.url, "--mac", "fa:16:3e:00:00:09", "--wait-for-mac", "20")
    assert (done.returncode, result["outcome"]) == (1, "unchanged"), result
    assert "MAC fa:16:3e:00:00:09 no longer on this machine" in result["message"]
    assert len(server.paths) == 1
    assert snapshot(root) == before


def test_a_mac_that_never_comes_is_left_to_the_image(server: Server, tmp_path: Path) -> None:
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc)
    plug(root, "eth3", "fa:16:3e:00:00:09")
    server.replies = [body(answer(doc))]
    before = snapshot(root)
    done, result = sync(root, server.url, "--mac", "fa:16:3e:00:00:09", "--wait-for-mac", "2")
    assert (done.returncode, result["outcome"]) == (1, "unchanged"), result
    assert len(server.paths) == 2  # at 0 s and 1 s; the next (3 s) is past the bound
    assert "fa:16:3e:00:00:09: left to the image's default config" in agent_log(root)
    assert snapshot(root) == before


def test_a_removed_nic_loses_its_files_and_rule_in_one_transaction(
        server: Server, tmp_path: Path) -> None:
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc)
    rules = (root / "etc/udev/rules.d/70-persistent-net.rules").read_text()
    assert "fa:16:3e:00:00:03" in rules  # eth1's
    detached = copy.deepcopy(doc)
    detached["ports"] = [p for p in doc["ports"] if p["mac_address"] != "FA:16:3E:00:00:03"]
    server.replies = [body(answer(doc)), body(answer(detached))]
    (root / "sys/class/net/eth1/address").unlink()
    (root / "sys/class/net/eth1").rmdir()  # udev's remove: the NIC is gone
    before = snapshot(root)
    done, result = sync(root, server.url, "--removed", "eth1", "--wait-for-mac", "10")
    assert (done.returncode, result["outcome"]) == (0, "applied"), done.stdout + done.stderr
    assert result["removed"] == "eth1"
    assert "changed" not in result
    assert changed_files(before, snapshot(root)) == {
        NETWORKD + "eth1.network", NETWORKD + "eth1.link",
        "etc/udev/rules.d/70-persistent-net.rules"}
    assert not (root / (NETWORKD + "eth1.network")).exists()
    rules = (root / "etc/udev/rules.d/70-persistent-net.rules").read_text()
    assert "fa:16:3e:00:00:03" not in rules
    assert "fa:16:3e:00:00:01" in rules
    assert len(server.paths) == 2


def test_a_nic_removed_while_its_config_was_in_flight_loses_what_landed_after(
        server: Server, tmp_path: Path) -> None:
    """udev's remove of a NIC whose config is not recorded yet (a sync adding it was
    still in flight): the remove sync does not end at once but waits until the answer
    no longer names it with a MAC the machine lacks. The config that lands meanwhile
    (here the host's apply of an answer fetched before the NIC went) is taken away
    with the fresh answer; before, it stayed until the drift timer's next run."""
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc)
    with_port = copy.deepcopy(doc)
    with_port["ports"].append(NEW_PORT)
    # nova's cache still holds the answer with the NIC, then the fresh one.
    server.replies = [body(answer(with_port)), *[body(answer(doc))] * 4]
    removing = sync_asking(root, server, "--removed", "eth3", "--wait-for-mac", "30")
    try:
        said = host_apply(root, with_port, "late-1", "30")
        assert said["added"] == "eth3", said
    finally:
        out, err = removing.communicate(timeout=120)
    result = contract.parse_result(out)
    assert result is not None
    assert result["outcome"] == "applied", out + err
    assert result["removed"] == "eth3"
    assert not (root / (NETWORKD + "eth3.network")).exists()
    assert "fa:16:3e:00:00:09" not in (root / "etc/udev/rules.d/70-persistent-net.rules"
                                       ).read_text()
    log = agent_log(root)
    assert "eth3 is not configured now: waiting until the answer no longer names it" in log
    assert "eth3 (fa:16:3e:00:00:09) still in it, not on this machine" in log


def test_an_answer_fetched_before_a_newer_one_was_taken_is_fetched_again(
        tmp_path: Path) -> None:
    """Two syncs' answers: the one that goes on under the lock last marks itself the
    newest, so one fetched before it is stale even when the newer one changed nothing
    (it would otherwise land over it and undo what that answer said)."""
    from netinject.guest import metadata

    root = str(tmp_path)
    first = metadata.Fetched(root, {}, (None, metadata.generation(root)))
    second = metadata.Fetched(root, {}, (None, metadata.generation(root)))
    assert second() == {}
    metadata.mark_newest(root)
    assert metadata.generation(root) != b""
    with pytest.raises(contract.AgentError, match="newer answer"):
        first()
    assert first.stale
    assert not second.stale
    third = metadata.Fetched(root, {}, (None, metadata.generation(root)))
    assert third() == {}


def test_dry_run_prints_the_diff_and_touches_nothing(server: Server, tmp_path: Path) -> None:
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc)
    server.replies = [body(answer(subnet_change(doc, dns=True)))]
    before = snapshot(root, skip=())
    done, result = sync(root, server.url, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert result["outcome"] == "unchanged"
    assert result["would_change"] == "2"
    out = done.stdout
    assert f"  changed /{NETWORKD}eth2.network" in out
    assert f"  changed /{NETWORKD}eth0.network" in out
    nics = out.split("NICs:")[1]
    assert nics.startswith(" changed eth0,eth2\n"), out
    assert "  eth2 changed:\n    mtu: 1450 -> 1400\n    routes: 172.31.0.0/16 via " \
        "192.0.2.254 -> 10.99.0.0/16 via 192.0.2.254\n" in nics
    assert "  eth0 changed:\n    dns: 198.51.100.53, 192.0.2.53 -> 198.51.100.53, " \
        "192.0.2.99\n" in nics
    assert "eth1" not in nics
    assert snapshot(root, skip=()) == before  # not even the log


def test_dry_run_says_nothing_of_a_mode_the_apply_keeps(server: Server,
                                                         tmp_path: Path) -> None:
    # A replaced file keeps its own mode (install.Target.mode): in a real guest the
    # dry run said "mode /etc/resolv.conf" for a file whose mode differs from the
    # manifest's, which the apply leaves as it is. Found by test_e2e_metadata.py's dry
    # run right after a real guest's boot.
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc, "ifupdown")
    (root / "etc/resolv.conf").unlink()  # (the tree's is a symlink, which the agent keeps)
    server.replies = [body(answer(doc)), body(answer(doc)), body(answer(doc))]
    done, result = sync(root, server.url)
    assert result["outcome"] == "applied", done.stdout + done.stderr
    (root / "etc/resolv.conf").chmod(0o640)  # as a guest's own may be
    done, result = sync(root, server.url, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert result["would_change"] == "0", done.stdout
    assert "files: none would change" in done.stdout, done.stdout
    before = snapshot(root)
    done, result = sync(root, server.url)
    assert result["outcome"] == "unchanged", done.stdout + done.stderr
    assert changed_files(before, snapshot(root)) == set()
    assert (root / "etc/resolv.conf").stat().st_mode & 0o7777 == 0o640


@pytest.mark.parametrize(("args", "named"), [
    (["--metadata-url", "https://169.254.169.254"], "--metadata-url"),
    (["--metadata-url", "http://169.254.169.254/openstack"], "--metadata-url"),
    (["--metadata-url", "http://user@169.254.169.254"], "--metadata-url"),
    (["--metadata-url", "http://[fe80::1%eth0]"], "--metadata-url"),
    (["--metadata-url", "http://169.254.169.254?x=1"], "--metadata-url"),
    (["--metadata-url", "http://999.1.1.1"], "--metadata-url"),
    (["--metadata-url", "http://host:99999"], "--metadata-url"),
    (["--metadata-url", "http://169.254.169.254\n"], "--metadata-url"),
    (["--metadata-url", "garbage"], "--metadata-url"),
    (["--mac", "fa:16:3e:00:00"], "--mac"),
    (["--mac", "fa:16:3e:00:00:0g"], "--mac"),
    (["--removed", "../eth0"], "--removed"),
    (["--wait-for-mac", "nan"], "--wait-for-mac"),
    (["--timeout", "-1"], "--timeout"),
    (["--timeout", "inf"], "--timeout"),
])
def test_bad_input_exits_2_naming_the_option(args: list[str], named: str,
                                             tmp_path: Path) -> None:
    root = booted(tmp_path, instance_doc(DOC))
    before = snapshot(root, skip=())
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", str(AGENT), "sync", "--root", str(root),
                           *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"argument {named}:" in done.stderr
    assert repr(args[1]) in done.stderr
    assert snapshot(root, skip=()) == before


def test_no_sync_before_a_first_boot_netinject_configured(server: Server,
                                                          tmp_path: Path) -> None:
    doc = instance_doc(DOC)
    root = make_guest(tmp_path / "root", doc, None)  # no drive: the image kept DHCP
    server.replies = [body(answer(doc))]
    before = snapshot(root)
    done, result = sync(root, server.url)
    assert (done.returncode, result["outcome"]) == (1, "unchanged")
    assert "the config drive decides the first boot" in result["message"]
    assert server.paths == []
    assert snapshot(root) == before


def test_sync_is_in_the_agents_help() -> None:
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", str(AGENT), "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    assert "sync" in done.stdout


# -- the metadata API and the host's own apply (qemu-guest-agent) side by side ----------------


@pytest.mark.parametrize("reply", [None, lambda: body(b"not found", 404)],
                         ids=["unreachable", "HTTP 404"])
def test_a_udev_triggered_sync_without_a_metadata_api_ends_at_once(
        reply: Callable[[], Reply] | None, server: Server, tmp_path: Path) -> None:
    """A cloud that drives day 2 through qemu-guest-agent has no metadata API: udev's
    remove of a NIC the host detached must not wait (and ask again) for one, or it
    would hold the transaction the host's ``hotplug detach`` applies. No answer at all
    on the first ask ends sync, unchanged, after one ask."""
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc)
    url = metadata_url(server, reply)
    before = snapshot(root)
    done, result = sync(root, url, "--removed", "eth1", "--wait-for-mac", "30")
    assert (done.returncode, result["outcome"]) == (1, "unchanged"), result
    assert "asking again" not in agent_log(root)
    if reply is not None:
        assert len(server.paths) == 1
        assert "HTTP 404" in result["message"]
    assert snapshot(root) == before


def test_the_answer_is_fetched_without_the_lock_and_again_if_a_change_landed_meanwhile(
        server: Server, tmp_path: Path) -> None:
    """While sync waits for a slow metadata API, the host's apply (qemu-guest-agent,
    ``--lock-wait 0``: it must find the lock free) adds a NIC. The answer sync then
    receives was fetched before that change: it is not applied over it but fetched
    again, and the fresh answer (the NIC and a new subnet route) applied."""
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc)
    with_port = copy.deepcopy(doc)
    with_port["ports"].append(NEW_PORT)
    release = threading.Event()

    def slow_old(h: BaseHTTPRequestHandler) -> None:
        release.wait(60)
        body(answer(subnet_change(doc)))(h)  # (computed before the NIC came)

    server.replies = [slow_old, body(answer(subnet_change(with_port)))]
    syncing = sync_asking(root, server, "--timeout", "30")
    try:
        assert len(server.paths) == 1
        said = host_apply(root, with_port, "host-1", "0")
        assert said["outcome"] == "applied", said
        assert said["added"] == "eth3"
    finally:
        release.set()
        out, err = syncing.communicate(timeout=120)
    result = contract.parse_result(out)
    assert result is not None
    assert result["outcome"] == "applied", out + err
    assert len(server.paths) == 2
    assert "another transaction changed the config while this answer was fetched" \
        in agent_log(root)
    assert (root / (NETWORKD + "eth3.network")).exists()  # the host's change stays
    assert "10.99.0.0/16" in (root / (NETWORKD + "eth2.network")).read_text()


@pytest.mark.parametrize(("servers", "changes"), [
    (["198.51.100.53", "192.0.2.53"], False),  # the same servers, NM's own comment
    (["192.0.2.53", "198.51.100.53"], True),  # another order: the resolver's differs
    (["198.51.100.53"], True),
], ids=["same servers", "reordered", "one missing"])
def test_a_resolv_conf_the_stack_rewrote_with_the_same_servers_is_not_a_change(
        servers: list[str], changes: bool, server: Server, tmp_path: Path) -> None:
    """NetworkManager writes /etc/resolv.conf itself, from the keyfiles' dns=, under its
    own comment. The same directives are the same file to sync (dry run and apply): a
    sync writing ours back would flip it again at each period. Different servers, or
    the same in another order (the resolver asks them in order), are a change."""
    doc = instance_doc(DOC)
    root = booted(tmp_path, doc)
    resolv = root / "etc/resolv.conf"
    resolv.unlink()  # (the tree's symlink to ../run: NM's images have a plain file)
    nm_text = "# Generated by NetworkManager\n" + "".join(
        f"nameserver  {s}\n" for s in servers)
    resolv.write_text(nm_text)
    server.replies = [body(answer(doc))]
    done, result = sync(root, server.url, "--dry-run")
    listed = "  changed /etc/resolv.conf" in done.stdout
    assert listed == changes, done.stdout
    done, result = sync(root, server.url)
    if changes:
        assert (done.returncode, result["outcome"]) == (0, "applied"), done.stdout
        assert resolv.read_text().startswith("# Generated by netinject")
    else:
        assert (done.returncode, result["outcome"]) == (1, "unchanged"), done.stdout
        assert result["message"] == "nothing to change"
        assert resolv.read_text() == nm_text
