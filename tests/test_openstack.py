"""The stock-OpenStack path against real peers: Keystone, Neutron and Glance from Debian
(OpenStack Zed, scripts/openstack-peer.sh), the real vendordata service under gunicorn,
and nova's OWN metadata and config-drive code (InstanceMetadata, DynamicJSON vendordata,
ConfigDriveBuilder) building real drives, which the real guest agent then reads.

Stand-ins appear only where no real peer misbehaves on demand: a target answering HTTP
500 and a target slower than nova's timeout (helpers.openstack.stand_in, said so below).
nova's vfat drive path loop-mounts, which this machine cannot: the vfat case writes the
files of nova's iso9660 drive onto a vfat volume with mtools instead.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from helpers.drive import iso_files
from helpers.guest import (
    AGENT,
    RecordingAttacher,
    agent_log,
    make_guest_for,
    run_agent,
    snapshot,
)
from helpers.openstack import (
    NETINJECT,
    clouds_with,
    service,
    slow_proxy,
    stand_in,
    vendor_json,
)
from netinject.guest import contract
from netinject.openstack import live
from netinject.openstack.peer import Peer, Tenant, free_port, wait_healthy
from netinject.openstack.service import Settings, Vendordata

pytestmark = [pytest.mark.openstack, pytest.mark.root]

UUID_RE = r"[0-9a-f-]{36}"


@pytest.fixture
def tenant() -> Iterator[Tenant]:
    t = Tenant.open()
    try:
        yield t
    finally:
        t.close()


def two_nic_instance(t: Tenant) -> tuple[str, list[Any], Any]:
    """An instance with two ports on two networks (IPv4 with routes, DNS and MTU 1400,
    plus SLAAC IPv6; and a second IPv4 network), made in the --nic order A, B."""
    a = t.network(f"a-{uuid.uuid4().hex[:6]}", mtu=1400)
    sa = t.subnet(a, ip_version=4, cidr="192.0.2.0/24", gateway_ip="192.0.2.1",
                  dns_nameservers=["192.0.2.53"],
                  host_routes=[{"destination": "198.51.100.0/24", "nexthop": "192.0.2.254"}])
    sa6 = t.subnet(a, ip_version=6, cidr="2001:db8:1::/64", ipv6_address_mode="slaac",
                   ipv6_ra_mode="slaac")
    b = t.network(f"b-{uuid.uuid4().hex[:6]}")
    sb = t.subnet(b, ip_version=4, cidr="203.0.113.0/24", gateway_ip=None)
    iid = str(uuid.uuid4())
    pa = t.port(a, iid, "fa:16:3e:00:00:0a",
                [{"subnet_id": sa.id, "ip_address": "192.0.2.10"}, {"subnet_id": sa6.id}])
    time.sleep(1.1)  # created_at has one-second resolution: A is older than B
    pb = t.port(b, iid, "fa:16:3e:00:00:0b", [{"subnet_id": sb.id,
                                                "ip_address": "203.0.113.20"}])
    return iid, [pa, pb], t.image(inject=True)


def nova_build(peer: Peer, conf: Path, t: Tenant, iid: str, image: str,
               ports: list[Any]) -> tuple[dict[str, Any], Path]:
    out = peer.state / f"drive-{iid}.iso"
    [result] = peer.build_drives(conf, [{
        "instance": iid, "project": t.project_id, "image": image, "hostname": "vm1",
        "ports": [p.id for p in ports], "out": str(out)}])
    return result, out


def guest_for(tmp: Path, iid: str, image: str, drive: Path) -> Path:
    inst = live.load("netinject-admin", iid, image, "vm1")
    return make_guest_for(tmp / "root", inst, drive)


def rendered_tree(tmp: Path, iid: str, image: str) -> dict[str, bytes]:
    """What ``netinject render --cloud --server`` writes (the operator's preview)."""
    out = tmp / "preview"
    done = subprocess.run([str(NETINJECT), "render", "--cloud", "netinject", "--server", iid,
                           "--image", image, "--hostname", "vm1", "--out", str(out)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def agent_outcome(root: Path) -> dict[str, str]:
    found = contract.parse_result(agent_log(root))
    assert found is not None, agent_log(root)
    return {k: str(v) for k, v in found.items()}


# -- the whole path ------------------------------------------------------------------------


def test_nova_builds_the_drive_with_our_answer_and_the_agent_installs_it(
        openstack_peer: Peer, tenant: Tenant, tmp_path: Path) -> None:
    peer = openstack_peer
    iid, ports, image = two_nic_instance(tenant)
    with service(tmp_path) as svc:
        conf = peer.nova_conf("auth", svc.url)
        result, drive = nova_build(peer, conf, tenant, iid, image.id, ports)
        assert result["error"] is None, result
        # nova called once per metadata version (5 on Zed); one answer was built, the
        # other calls came from memory; the tags hold the NIC map in --nic order.
        assert svc.posts(at_least=5) == 5, svc.text()
        assert svc.built() == 1, svc.text()
    assert tenant.tags(ports[0].id) == [f"netinject:{iid}:0"]
    assert tenant.tags(ports[1].id) == [f"netinject:{iid}:1"]

    vendor = vendor_json(drive)
    payload = vendor["netinject"]
    assert payload["format"] == 1
    assert payload["instance"] == iid
    # Each file is text in the JSON (readable in the metadata service), for every stack.
    assert {"interfaces", "70-persistent-net.rules", "resolv.conf", "hostname",
            "90-netinject.yaml", "netinject-eth0.nmconnection", "10-netinject-eth0.network",
            "10-netinject-eth0.link"} <= set(payload["files"])
    assert "iface eth0 inet static" in payload["files"]["interfaces"]
    # The operator's preview renders the very same files.
    preview = rendered_tree(tmp_path, iid, image.id)
    by_path = {rec.path: rec.source for rec in contract.parse_manifest(
        payload["manifest"].encode()).files}
    assert {p: payload["files"][s].encode() for p, s in by_path.items()} == preview

    root = guest_for(tmp_path, iid, image.id, drive)
    before = snapshot(root)
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    assert agent_outcome(root)["outcome"] == "installed", agent_log(root)
    eni = (root / "etc/network/interfaces").read_text()
    assert eni == preview["etc/network/interfaces"].decode()
    for line in ("auto eth0", "iface eth0 inet static", "address 192.0.2.10",
                 "netmask 255.255.255.0", "gateway 192.0.2.1", "mtu 1400",
                 "dns-nameservers 192.0.2.53",
                 "up ip route add 198.51.100.0/24 via 192.0.2.254 dev eth0",
                 "iface eth1 inet static", "address 203.0.113.20", "mtu 1450",
                 "iface eth0 inet6 auto"):
        assert line in eni, eni
    assert (root / "etc/hostname").read_text() == "vm1\n"
    rules = (root / "etc/udev/rules.d/70-persistent-net.rules").read_text()
    assert 'ATTR{address}=="fa:16:3e:00:00:0a"' in rules
    assert 'NAME="eth0"' in rules
    after = snapshot(root)
    changed = {k for k in after if after.get(k) != before.get(k) and after[k][0] == "file"}
    assert {k for k in changed if not k.startswith("var/lib/netinject/")} == {
        "etc/network/interfaces", "etc/hostname", "etc/udev/rules.d/70-persistent-net.rules"}
    # The next boot: nothing new (this drive has no volume id: the manifest decides).
    done = run_agent(root)
    assert agent_outcome(root)["outcome"] == "unchanged", agent_log(root)
    assert snapshot(root) == after


def test_netinject_drive_builds_the_same_files_from_the_live_cloud(
        openstack_peer: Peer, tenant: Tenant, tmp_path: Path) -> None:
    """``netinject drive --cloud --server``: netinject's own drive (for clouds that build
    their own) from the live cloud, installed by the agent like nova's."""
    iid, _ports, image = two_nic_instance(tenant)
    out = tmp_path / "own.img"
    done = subprocess.run([str(NETINJECT), "drive", "--cloud", "netinject", "--server", iid,
                           "--image", image.id, "--hostname", "vm1", "--out", str(out)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "netinject payload:" in done.stderr
    preview = rendered_tree(tmp_path, iid, image.id)
    root = guest_for(tmp_path, iid, image.id, out)
    assert run_agent(root).returncode == 0
    assert agent_outcome(root)["outcome"] == "installed", agent_log(root)
    assert (root / "etc/network/interfaces").read_bytes() == preview["etc/network/interfaces"]
    # A preview writes nothing to the cloud: no tags.
    assert tenant.tags(_ports[0].id) == []


def test_the_agent_reads_the_same_answer_off_a_vfat_drive(
        openstack_peer: Peer, tenant: Tenant, tmp_path: Path) -> None:
    """nova's vfat drives hold the same files (its vfat path loop-mounts, which this
    machine cannot: nova's iso9660 files are written to vfat with mtools)."""
    iid, ports, image = two_nic_instance(tenant)
    with service(tmp_path) as svc:
        result, iso = nova_build(openstack_peer, openstack_peer.nova_conf("vfat", svc.url),
                                 tenant, iid, image.id, ports)
    assert result["error"] is None, result
    tree = tmp_path / "tree"
    for rel, data in iso_files(iso).items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    vfat = tmp_path / "drive.vfat"
    subprocess.run(["mkfs.vfat", "-C", "-n", "config-2", str(vfat), "65536"], check=True,
                   capture_output=True)
    subprocess.run(["mcopy", "-s", "-i", str(vfat), *map(str, tree.iterdir()), "::/"],
                   check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    root = guest_for(tmp_path, iid, image.id, vfat)
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    assert agent_outcome(root)["outcome"] == "installed", agent_log(root)
    assert "address 192.0.2.10\n" in (root / "etc/network/interfaces").read_text()


# -- failure modes: nova stores {} and the guest keeps DHCP ---------------------------------


def _plain_guest(tmp: Path, iid: str, macs: list[str], drive: Path) -> Path:
    """A guest tree for an instance whose Neutron data netinject refuses (NICs by MAC)."""
    from netinject.sources.neutron import parse_document

    doc = {"instance": {"uuid": iid}, "networks": [{"id": "n"}], "subnets": [],
           "ports": [{"id": str(uuid.uuid4()), "mac_address": mac, "network_id": "n"}
                     for mac in macs]}
    return make_guest_for(tmp / "root", parse_document(doc).instance, drive)


def _dhcp_kept(tmp: Path, iid: str, image: str, drive: Path, macs: list[str] | None = None
               ) -> None:
    vendor = vendor_json(drive)
    assert vendor["netinject"] == {}, vendor
    root = (guest_for(tmp, iid, image, drive) if macs is None
            else _plain_guest(tmp, iid, macs, drive))
    before = snapshot(root)
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    assert agent_outcome(root)["outcome"] == "no-payload", agent_log(root)
    assert "leaving the image's network config in place" in agent_log(root)
    assert snapshot(root) == before


@pytest.mark.parametrize("mode", ["service-down", "http-500", "slow", "neutron-down",
                                  "legacy-image"])
def test_failure_modes_leave_dhcp(mode: str, openstack_peer: Peer, tenant: Tenant,
                                  tmp_path: Path) -> None:
    peer = openstack_peer
    iid, ports, image = two_nic_instance(tenant)
    if mode == "legacy-image":
        image = tenant.image(inject=False)
    timeout = 5.0
    t0 = time.monotonic()
    if mode == "service-down":
        conf = peer.nova_conf(mode, f"http://127.0.0.1:{free_port()}/")
        result, drive = nova_build(peer, conf, tenant, iid, image.id, ports)
    elif mode in ("http-500", "slow"):
        # STAND-IN targets: a broken one, and one slower than nova's read timeout.
        timeout = 1.0
        with stand_in(500 if mode == "http-500" else 200, b'{"error": "stand-in"}',
                      delay=3.0 if mode == "slow" else 0.0) as url:
            conf = peer.nova_conf(mode, url, read_timeout=timeout)
            result, drive = nova_build(peer, conf, tenant, iid, image.id, ports)
    else:
        extra = ({"network_endpoint_override": f"http://127.0.0.1:{free_port()}"}
                 if mode == "neutron-down" else {})
        with service(tmp_path, "netinject", clouds_yaml=clouds_with(peer, tmp_path, **extra)
                     ) as svc:
            conf = peer.nova_conf(mode, svc.url)
            result, drive = nova_build(peer, conf, tenant, iid, image.id, ports)
            log = svc.text()
        if mode == "neutron-down":
            assert f"instance {iid}: Neutron: list ports" in log, log
            assert '"POST / HTTP/1.1" 502' in log, log
        else:
            assert f"instance {iid}: image {image.id} has no support_inject_ip=true" in log
    elapsed = time.monotonic() - t0
    assert result["error"] is None, result  # the boot goes on
    if mode == "slow":
        # nova waits its read timeout once per metadata version (5 on Zed).
        assert result["seconds"] >= 5 * timeout, result
    assert elapsed < 60
    _dhcp_kept(tmp_path, iid, image.id, drive)
    assert tenant.tags(ports[0].id) == []  # nothing written to Neutron


def test_failure_fatal_fails_the_build(openstack_peer: Peer, tenant: Tenant) -> None:
    iid, ports, image = two_nic_instance(tenant)
    conf = openstack_peer.nova_conf("fatal", f"http://127.0.0.1:{free_port()}/",
                                    failure_fatal=True)
    result, _ = nova_build(openstack_peer, conf, tenant, iid, image.id, ports)
    assert result["error"] is not None
    assert "ConnectFailure" in result["error"], result


def test_bad_neutron_data_is_refused_naming_the_field(
        openstack_peer: Peer, tenant: Tenant, tmp_path: Path) -> None:
    """Neutron accepts a host route whose next hop is off the subnet; a guest could not
    use it. The service answers 422 naming the subnet's field, writes no tag, and nova
    stores {}."""
    net = tenant.network(f"bad-{uuid.uuid4().hex[:6]}")
    sub = tenant.subnet(net, ip_version=4, cidr="192.0.2.0/24", gateway_ip="192.0.2.1",
                        host_routes=[{"destination": "198.51.100.0/24",
                                      "nexthop": "203.0.113.1"}])
    iid = str(uuid.uuid4())
    port = tenant.port(net, iid, "fa:16:3e:00:01:0a",
                       [{"subnet_id": sub.id, "ip_address": "192.0.2.10"}])
    image = tenant.image(inject=True)
    with service(tmp_path) as svc:
        token = _token("nova")
        r = requests.post(svc.url, json={"instance-id": iid, "image-id": image.id},
                          headers={"X-Auth-Token": token}, timeout=10)
        assert r.status_code == 422, r.text
        assert r.json()["fields"] == [
            f"subnet {sub.id}.host_routes[0].nexthop: '203.0.113.1' is not reachable on "
            "subnet 192.0.2.0/24"]
        result, drive = nova_build(openstack_peer, openstack_peer.nova_conf("bad", svc.url),
                                   tenant, iid, image.id, [port])
        assert f"instance {iid}: invalid Neutron data: subnet {sub.id}" in svc.text()
    assert result["error"] is None
    assert tenant.tags(port.id) == []
    _dhcp_kept(tmp_path, iid, image.id, drive, ["fa:16:3e:00:01:0a"])


# -- authentication ---------------------------------------------------------------------------


def _token(cloud: str) -> str:
    from helpers.openstack import connect

    token: str = connect(cloud).session.get_token()
    return token


def test_auth_accepts_novas_token_and_refuses_others(
        openstack_peer: Peer, tenant: Tenant, tmp_path: Path) -> None:
    iid, _ports, image = two_nic_instance(tenant)
    body = {"instance-id": iid, "image-id": image.id, "hostname": "vm1"}
    with service(tmp_path) as svc:
        def post(headers: dict[str, str]) -> requests.Response:
            return requests.post(svc.url, json=body, headers=headers, timeout=10)
        assert post({}).status_code == 401
        assert post({"X-Auth-Token": "gAAAAAB-not-a-token"}).status_code == 401
        # A valid token without the admin or service role (a tenant's user).
        r = post({"X-Auth-Token": _token("demo")})
        assert r.status_code == 403
        assert "admin,service" in r.text
        r = post({"X-Auth-Token": _token("nova")})
        assert r.status_code == 200
        assert r.json()["instance"] == iid
        # The health check needs no token (load balancers).
        assert requests.get(svc.url + "healthcheck", timeout=5).status_code == 200
    with service(tmp_path, "netinject", "--no-auth") as svc:
        assert "authentication is OFF" in svc.text()
        r = requests.post(svc.url, json=body, timeout=10)
        assert r.status_code == 200
        assert r.json()["instance"] == iid


@pytest.mark.parametrize("auth", ["keystone", "no-auth"])
def test_slow_clients_do_not_delay_novas_call(
        auth: str, openstack_peer: Peer, tenant: Tenant, tmp_path: Path) -> None:
    """Issue 20, V1: sixteen connections trickling a byte every 0.5 s (headers or body)
    used to hold all 8 threads of the service's worker, so nova's call waited past its
    5 s read timeout. Each request is now read whole before a thread sees it: nova's
    call (a real build: Glance, Neutron, rendering) is answered well within it."""
    from helpers.vendordata import slow_clients

    iid, _ports, image = two_nic_instance(tenant)
    body = {"instance-id": iid, "image-id": image.id, "hostname": "vm1"}
    headers = {} if auth == "no-auth" else {"X-Auth-Token": _token("nova")}
    args = ("--no-auth",) if auth == "no-auth" else ()
    with service(tmp_path, "netinject", *args) as svc:
        # The service's first call authenticates it with Keystone (seconds on this
        # peer, at times past the deadline: then the build lands for the next call):
        # made before the slow clients come.
        warm = {**body, "hostname": "warm"}
        deadline = time.monotonic() + 30
        while requests.post(svc.url, json=warm, headers=headers,
                            timeout=10).status_code != 200:
            assert time.monotonic() < deadline, svc.text()
            time.sleep(0.5)
        with slow_clients(svc.url) as stats:
            t0 = time.monotonic()
            r = requests.post(svc.url, json=body, headers=headers, timeout=5)
            took = time.monotonic() - t0
        assert r.status_code == 200, r.text
        assert r.json()["files"]["hostname"] == "vm1\n"  # built for this call
        assert took < 2.5, (took, stats)
        assert stats["sent"] >= 16


@pytest.mark.parametrize("broken", ["keystone-down", "no-catalog-entry"])
def test_keystone_or_catalog_failures_are_a_502_without_the_reason(
        broken: str, openstack_peer: Peer, tenant: Tenant, tmp_path: Path) -> None:
    """Issue 20, V3: Keystone down (the auth URL a closed port) or the region missing
    from the catalog was a 500 whose reply held the service's auth URL. Now a 502
    naming the call; the reason only in the service's log."""
    iid, _ports, image = two_nic_instance(tenant)
    entry = openstack_peer.cloud("netinject")
    dead = f"http://127.0.0.1:{free_port()}/v3"
    extra: dict[str, Any] = ({"auth": {**entry["auth"], "auth_url": dead}}
                             if broken == "keystone-down" else {"region_name": "Nowhere"})
    with service(tmp_path, "netinject", "--no-auth",
                 clouds_yaml=clouds_with(openstack_peer, tmp_path, **extra)) as svc:
        r = requests.post(svc.url, json={"instance-id": iid, "image-id": image.id},
                          timeout=10)
        log = svc.text()
    assert r.status_code == 502, r.text
    assert r.json() == {"error": f"Glance: image {image.id} failed (the reason is in the "
                                 "service's log)"}
    assert "127.0.0.1" not in r.text
    assert "http" not in r.text
    reason = dead if broken == "keystone-down" else "Nowhere region not found"
    assert reason in log, log
    assert "Traceback" not in log, log


def test_the_answer_follows_the_hostname_nova_sends(
        openstack_peer: Peer, tenant: Tenant) -> None:
    """Issue 20, V4: a new hostname for an instance got the answer built for the old
    one, even past --fresh, until a port, subnet or network changed."""
    iid, _ports, image = two_nic_instance(tenant)
    svc = Vendordata(Settings(cloud="netinject", deadline=30, api_timeout=20))
    try:
        req = {"instance-id": iid, "image-id": image.id, "hostname": "vm1"}
        assert svc.handle(req).body["files"]["hostname"] == "vm1\n"
        renamed = svc.handle({**req, "hostname": "web-2"})
        assert (renamed.how, renamed.body["files"]["hostname"]) == ("built", "web-2\n")
        svc.settle()
        svc.settings = Settings(cloud="netinject", deadline=30, api_timeout=20, fresh=0)
        assert svc.handle(req).body["files"]["hostname"] == "vm1\n"
        again = svc.handle(req)
        assert (again.how, again.body["files"]["hostname"]) == ("revalidated", "vm1\n")
    finally:
        svc.settle()
        svc.close()


# -- the NIC index map on port tags, and the cache ---------------------------------------------


def test_nic_indexes_live_on_port_tags_and_stay_stable(
        openstack_peer: Peer, tenant: Tenant) -> None:
    svc = Vendordata(Settings(cloud="netinject", fresh=60))
    try:
        iid, ports, image = two_nic_instance(tenant)
        req = {"instance-id": iid, "image-id": image.id, "hostname": "vm1"}
        first = svc.handle(req)
        assert (first.status, first.how) == (200, "built"), first
        svc.settle()  # the tags are written right after the answer
        revs = [tenant.admin.network.get_port(p.id).revision_number for p in ports]
        assert svc.handle(req).how == "cached"
        # Past the fresh window: one Neutron listing confirms nothing changed; no tag
        # is written again.
        svc.settings = Settings(cloud="netinject", fresh=0)
        again = svc.handle(req)
        assert (again.how, again.body) == ("revalidated", first.body)
        assert [tenant.admin.network.get_port(p.id).revision_number for p in ports] == revs

        # Detach eth0 (port deleted), hot-plug a new port: it takes the freed index 0;
        # eth1 keeps 1.
        tenant.admin.network.delete_port(ports[0].id)
        net_a = ports[0].network_id
        new = tenant.port(tenant.demo.network.get_network(net_a), iid, "fa:16:3e:00:00:0c",
                          [{"subnet_id": ports[0].fixed_ips[0]["subnet_id"],
                            "ip_address": "192.0.2.11"}])
        rebuilt = svc.handle(req)
        assert rebuilt.how == "built"
        svc.settle()
        assert tenant.tags(new.id) == [f"netinject:{iid}:0"]
        assert tenant.tags(ports[1].id) == [f"netinject:{iid}:1"]
        assert "address 192.0.2.11\n" in rebuilt.body["files"]["interfaces"]

        # The port moves to another instance: its old tag goes, it is new there (0).
        other = str(uuid.uuid4())
        tenant.admin.network.update_port(ports[1].id, device_id=other)
        moved = svc.handle({"instance-id": other, "image-id": image.id})
        assert moved.how == "built"
        svc.settle()
        assert tenant.tags(ports[1].id) == [f"netinject:{other}:0"]
        # ... and the first instance now has only eth0.
        assert "eth1" not in svc.handle(req).body["files"]["interfaces"]
    finally:
        svc.close()


def _port_listings(peer: Peer, iid: str) -> int:
    """How many times the peer's Neutron listed the instance's ports (its own log)."""
    return (peer.state / "neutron.log").read_text().count(
        f'"GET /v2.0/ports?device_id={iid} ')


def test_the_metadata_path_sees_an_attach_and_a_subnet_change_once_fresh_has_passed(
        openstack_peer: Peer, tenant: Tenant) -> None:
    """Within ``fresh`` nova's burst for one drive is answered from memory (Neutron's
    own log: no port listing); past it, one call checks the revisions and answers what
    Neutron holds now: a port attached as nova's attach makes it (device_id set), then a
    subnet's DNS servers and host routes."""
    fresh = 3.0
    svc = Vendordata(Settings(cloud="netinject", fresh=fresh, deadline=30, api_timeout=20))
    try:
        iid, ports, image = two_nic_instance(tenant)
        req = {"instance-id": iid, "image-id": image.id, "hostname": "vm1"}
        first = svc.handle(req)
        assert first.how == "built", first
        svc.settle()
        listed = _port_listings(openstack_peer, iid)
        assert listed >= 1
        # nova's other calls for the same drive: from memory, Neutron not asked.
        assert [svc.handle(req).how for _ in range(4)] == ["cached"] * 4
        assert _port_listings(openstack_peer, iid) == listed

        # Past fresh with nothing changed: one listing, the same answer.
        time.sleep(fresh)
        again = svc.handle(req)
        assert (again.how, again.body) == ("revalidated", first.body)
        assert _port_listings(openstack_peer, iid) == listed + 1

        # nova attaches a port: it sets device_id before the NIC reaches the guest.
        net_b = tenant.demo.network.get_network(ports[1].network_id)
        new = tenant.port(net_b, iid, "fa:16:3e:00:00:0c",
                          [{"subnet_id": ports[1].fixed_ips[0]["subnet_id"],
                            "ip_address": "203.0.113.21"}])
        time.sleep(fresh)
        attached = svc.handle(req)
        assert attached.how == "built", attached
        svc.settle()
        nics = contract.parse_manifest(attached.body["manifest"].encode()).nics
        assert ("eth2", "fa:16:3e:00:00:0c") in nics, nics
        assert "address 203.0.113.21\n" in attached.body["files"]["interfaces"]
        assert tenant.tags(new.id) == [f"netinject:{iid}:2"]

        # An operator changes the first subnet's DNS servers and host routes (nova
        # hears nothing of it).
        [subnet] = [ip["subnet_id"] for ip in ports[0].fixed_ips
                    if ip["ip_address"] == "192.0.2.10"]
        tenant.admin.network.update_subnet(
            subnet, dns_nameservers=["192.0.2.53", "192.0.2.54"],
            host_routes=[{"destination": "198.51.100.0/24", "nexthop": "192.0.2.254"},
                         {"destination": "198.51.100.128/25", "nexthop": "192.0.2.254"}])
        within = svc.handle(req)  # (the attach's answer is still fresh, or just checked)
        assert within.how in ("cached", "revalidated"), within
        time.sleep(fresh)
        changed = svc.handle(req)
        assert changed.how == "built", changed
        eni = changed.body["files"]["interfaces"]
        assert "dns-nameservers 192.0.2.53 192.0.2.54" in eni, eni
        assert "198.51.100.128/25 via 192.0.2.254" in eni, eni
        svc.settle()
        # And the next burst is from memory again.
        listed = _port_listings(openstack_peer, iid)
        assert [svc.handle(req).how for _ in range(5)] == ["cached"] * 5
        assert _port_listings(openstack_peer, iid) == listed
    finally:
        svc.close()


def test_ports_of_one_second_are_ordered_by_id(tenant: Tenant, openstack_peer: Peer) -> None:
    """What the service can know of nova's attach order: creation time (one-second
    resolution), then id. Ports made within one second take indexes in id order."""
    net = tenant.network(f"o-{uuid.uuid4().hex[:6]}")
    sub = tenant.subnet(net, ip_version=4, cidr="192.0.2.0/24", gateway_ip="192.0.2.1")
    iid = str(uuid.uuid4())
    made = [tenant.port(net, iid, f"fa:16:3e:00:02:{n:02x}",
                        [{"subnet_id": sub.id, "ip_address": f"192.0.2.{20 + n}"}])
            for n in range(3)]
    image = tenant.image(inject=True)
    svc = Vendordata(Settings(cloud="netinject"))
    try:
        assert svc.handle({"instance-id": iid, "image-id": image.id}).ok
        svc.settle()
    finally:
        svc.close()
    order = sorted(made, key=lambda p: (p.created_at, p.id))
    for index, port in enumerate(order):
        assert tenant.tags(port.id) == [f"netinject:{iid}:{index}"]


def test_a_slow_neutron_gets_504_within_the_deadline_then_the_cached_answer(
        openstack_peer: Peer, tenant: Tenant, tmp_path: Path) -> None:
    neutron = int(openstack_peer.cloud("netinject")["auth"]["auth_url"].rsplit(":", 1)[1]
                  .split("/")[0])
    assert neutron  # keystone's port; Neutron's comes from the catalog
    iid, _ports, image = two_nic_instance(tenant)
    catalog = tenant.admin.session.get_endpoint(service_type="network", interface="public")
    port = int(catalog.rstrip("/").rsplit(":", 1)[1])
    # Slower than the deadline, faster than the service's own API timeout (3 s).
    with slow_proxy(port, delay=2.0) as slow:
        clouds = clouds_with(openstack_peer, tmp_path,
                             network_endpoint_override=f"http://127.0.0.1:{slow}")
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(clouds)
        try:
            svc = Vendordata(Settings(cloud="netinject", deadline=0.5))
            req = {"instance-id": iid, "image-id": image.id}
            t0 = time.monotonic()
            first = svc.handle(req)
            took = time.monotonic() - t0
            assert first.status == 504, first
            assert took < 1.0, took
            # nova's next call joins the build under way: no second deadline to wait.
            t0 = time.monotonic()
            second = svc.handle(req)
            assert second.status == 504, second
            assert time.monotonic() - t0 < 0.25
            # The build went on; once it lands, the same request is answered from memory.
            deadline = time.monotonic() + 30
            while svc.handle(req).status != 200:
                assert time.monotonic() < deadline
                time.sleep(0.5)
            assert svc.handle(req).how == "cached"
            svc.close()
        finally:
            os.environ["OS_CLIENT_CONFIG_FILE"] = str(openstack_peer.clouds_yaml)


def test_bad_requests_are_refused(openstack_peer: Peer) -> None:
    svc = Vendordata(Settings(cloud="netinject"))
    try:
        assert svc.handle([]).status == 400
        bad = svc.handle({"instance-id": "../../etc", "image-id": "x"})
        assert bad.status == 400
        assert "instance-id" in bad.body["error"]
        bfv = svc.handle({"instance-id": str(uuid.uuid4()), "image-id": ""})
        assert (bfv.status, bfv.body, bfv.how) == (200, {}, "legacy")
    finally:
        svc.close()


def test_render_cloud_errors_are_clear(openstack_peer: Peer, tenant: Tenant) -> None:
    done = subprocess.run([str(NETINJECT), "render", "--cloud", "nope", "--server",
                           str(uuid.uuid4()), "--print"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 1
    assert "cloud 'nope'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run([str(NETINJECT), "render", "--cloud", "netinject", "--server",
                           "not-a-uuid", "--print"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2
    assert "--server: 'not-a-uuid'" in done.stderr
    def render(image: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(NETINJECT), "render", "--cloud", "netinject", "--server",
                               str(uuid.uuid4()), "--image", image, "--hostname", "h",
                               "--print"], capture_output=True, text=True, check=False)
    done = render("x")
    assert done.returncode == 1, done.stderr
    assert done.stderr == ("netinject: error: Glance: image x: HTTP 404: 404 Not Found No "
                           "image found with ID x\n"), done.stderr
    done = render(tenant.image(inject=True).id)
    assert done.returncode == 2
    assert "has no ports in Neutron" in done.stderr, done.stderr





def test_the_wsgi_factory_runs_under_plain_gunicorn(
        openstack_peer: Peer, tenant: Tenant, tmp_path: Path) -> None:
    """The documented production form: gunicorn with the factory and netinject's
    worker, settings from the environment."""
    import sys

    iid, _ports, image = two_nic_instance(tenant)
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("w")
    env = {**os.environ, "NETINJECT_CLOUD": "netinject", "NETINJECT_ROLES": "service",
           "NETINJECT_READ_TIMEOUT": "1"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "--workers", "2", "--threads", "4",
         "--worker-class", "netinject.openstack.server.Worker",
         "--bind", f"127.0.0.1:{port}",
         "netinject.openstack.wsgi:application()"], env=env, stdout=log,
        stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_healthy(url, proc, tmp_path / "gunicorn.log")
        body = {"instance-id": iid, "image-id": image.id}
        assert requests.post(url, json=body, timeout=10).status_code == 401
        r = requests.post(url, json=body, headers={"X-Auth-Token": _token("nova")}, timeout=10)
        assert r.status_code == 200
        assert r.json()["instance"] == iid
        # The worker's read timeout from the environment: a request cut short, 408.
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
            assert s.recv(100).startswith(b"HTTP/1.1 408 ")
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_the_wsgi_factory_needs_its_cloud() -> None:
    from netinject.errors import UsageError
    from netinject.openstack.wsgi import settings_from_env

    with pytest.raises(UsageError, match="NETINJECT_CLOUD is not set"):
        settings_from_env({})
    with pytest.raises(UsageError, match="NETINJECT_AUTH: 'maybe'"):
        settings_from_env({"NETINJECT_CLOUD": "x", "NETINJECT_AUTH": "maybe"})
    settings, auth, roles, memcached = settings_from_env(
        {"NETINJECT_CLOUD": "x", "NETINJECT_ROLES": "a, b", "NETINJECT_FRESH": "5"})
    assert (settings.cloud, settings.fresh, auth, roles, memcached) == (
        "x", 5.0, True, ("a", "b"), None)
    assert settings.max_builds == 64
    assert settings_from_env({"NETINJECT_CLOUD": "x", "NETINJECT_MAX_BUILDS": "9"}
                             )[0].max_builds == 9
    with pytest.raises(UsageError, match="NETINJECT_MAX_BUILDS must be at least 1"):
        settings_from_env({"NETINJECT_CLOUD": "x", "NETINJECT_MAX_BUILDS": "0"})


# -- issue 22: hot-plug and sync from the live cloud ------------------------------------------


@dataclass
class Day2:
    """A server with one port in Neutron (its NIC map tagged by the vendordata service,
    as when nova built its drive), its guest first-booted from a drive with that config,
    and a second, unbound port on another network, ready to be hot-plugged."""

    iid: str
    image: str
    net: Any
    subnet: Any
    first: Any
    spare: Any
    root: Path
    side: Any
    rec: RecordingAttacher

    def cli(self, qga: Any, *args: str) -> int:
        from netinject.cli import main

        return main([*args, "--cloud", "netinject", "--server", self.iid, "--image",
                     self.image, "--hostname", "vm1", "--qga", str(qga.sock)])

    def eni(self) -> str:
        return (self.root / "etc/network/interfaces").read_text()


def _unbound_port(t: Tenant, net: Any, mac: str, ips: list[dict[str, str]],
                  device_id: str = "") -> Any:
    port = t.demo.network.create_port(network_id=net.id, mac_address=mac, fixed_ips=ips,
                                      device_id=device_id,
                                      device_owner="compute:nova" if device_id else "")
    t.made.append(("port", port.id))
    return port


@pytest.fixture
def day2(openstack_peer: Peer, tenant: Tenant, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Day2:
    from netinject import drive, hotplug
    from netinject.vm import testbed as vm

    net = tenant.network(f"d2-{uuid.uuid4().hex[:6]}", mtu=1450)
    sub = tenant.subnet(net, ip_version=4, cidr="192.0.2.0/24", gateway_ip="192.0.2.1",
                        dns_nameservers=["192.0.2.1"],
                        host_routes=[{"destination": "198.51.100.0/24",
                                      "nexthop": "192.0.2.1"}])
    iid = str(uuid.uuid4())
    first = tenant.port(net, iid, vm.GUEST_MAC, [{"subnet_id": sub.id,
                                                  "ip_address": "192.0.2.10"}])
    net2 = tenant.network(f"d2b-{uuid.uuid4().hex[:6]}")
    sub2 = tenant.subnet(net2, ip_version=4, cidr="203.0.113.0/24",
                         gateway_ip="203.0.113.1")
    spare = _unbound_port(tenant, net2, vm.HOTPLUG_MAC, [{"subnet_id": sub2.id,
                                                           "ip_address": "203.0.113.10"}])
    image = tenant.image(inject=True).id
    svc = Vendordata(Settings(cloud="netinject", deadline=30, api_timeout=20))
    try:
        assert svc.handle({"instance-id": iid, "image-id": image, "hostname": "vm1"}).ok
        svc.settle()
    finally:
        svc.close()
    assert tenant.tags(first.id) == [f"netinject:{iid}:0"]
    inst = live.load("netinject", iid, image, "vm1")
    disk = drive.build(inst, tmp_path / "drive.img", "vfat").path
    root = make_guest_for(tmp_path / "root", inst, disk)
    assert run_agent(root).returncode == 0
    assert agent_outcome(root)["outcome"] == "installed", agent_log(root)
    side = hotplug.GuestSide(command=("/usr/bin/python3", "-I", "-S", str(AGENT)),
                             root=str(root), sysfs=str(root / "sys"))
    rec = RecordingAttacher()
    monkeypatch.setattr(hotplug, "GuestSide", lambda: side)
    monkeypatch.setattr(hotplug, "QmpAttacher", lambda _path: rec)
    return Day2(iid, image, net, sub, first, spare, root, side, rec)


def _service_nics(iid: str, image: str) -> list[tuple[str, str]]:
    """The NICs (name, MAC) in the vendordata service's answer for the instance (a fresh
    service: built from Neutron as it is now), after its tag writes (if any) landed."""
    svc = Vendordata(Settings(cloud="netinject", deadline=30, api_timeout=20))
    try:
        answer = svc.handle({"instance-id": iid, "image-id": image, "hostname": "vm1"})
        assert answer.ok, answer
        svc.settle()
    finally:
        svc.close()
    return contract.parse_manifest(answer.body["manifest"].encode()).nics


def test_attach_sync_and_detach_from_the_live_cloud(
        day2: Day2, tenant: Tenant, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22: ``hotplug attach --cloud`` reads the server, its ports and the new port
    in Neutron, configures the guest (real qemu-ga, real agent), attaches the NIC (QEMU
    stood in for, see RecordingAttacher), then binds and tags the port with the index
    the vendordata service gives it; a subnet and network change in Neutron reaches the
    guest through ``sync --cloud``, which names what changed; ``detach --cloud`` takes
    the NIC and its config away and frees the index."""
    from conftest import QgaAgent
    from netinject.vm import testbed as vm

    qga = QgaAgent(tmp_path)
    qga.start()
    try:
        qmp = str(tmp_path / "qmp.sock")
        before = tenant.admin.network.get_port(day2.first.id).revision_number
        assert day2.cli(qga, "hotplug", "attach", "--port", day2.spare.id, "--qmp", qmp,
                        "--no-wait") == 0
        out = capsys.readouterr().out.splitlines()
        assert day2.rec.calls == ["attach eth1"]
        assert f"eth1 ({vm.HOTPLUG_MAC}) attached; the guest has its config (not waiting " \
               "for its address)" in out
        assert f"Neutron: port {day2.spare.id}: device_id {day2.iid}" in out
        assert f"Neutron: port {day2.spare.id}: tags netinject:{day2.iid}:1" in out
        assert tenant.tags(day2.spare.id) == [f"netinject:{day2.iid}:1"]
        assert tenant.admin.network.get_port(day2.spare.id).device_id == day2.iid
        # The first port's tag was already there: not written again.
        assert tenant.admin.network.get_port(day2.first.id).revision_number == before
        for line in ("iface eth1 inet static", "address 203.0.113.10",
                     "address 192.0.2.10"):
            assert line in day2.eni(), day2.eni()
        # The vendordata service agrees on the index (and writes no tag of its own).
        assert _service_nics(day2.iid, day2.image) == [("eth0", vm.GUEST_MAC),
                                                       ("eth1", vm.HOTPLUG_MAC)]
        assert tenant.tags(day2.spare.id) == [f"netinject:{day2.iid}:1"]

        # An operator changes the first NIC's subnet and network in Neutron.
        tenant.admin.network.update_subnet(
            day2.subnet.id, dns_nameservers=["192.0.2.1", "192.0.2.53"],
            host_routes=[{"destination": "198.51.100.0/24", "nexthop": "192.0.2.1"},
                         {"destination": "198.51.100.128/25", "nexthop": "192.0.2.1"}])
        tenant.admin.network.update_network(day2.net.id, mtu=1400)
        assert day2.cli(qga, "sync", "--dry-run") == 0
        assert "mtu 1400" not in day2.eni()  # (a dry run changes nothing)
        capsys.readouterr()
        assert day2.cli(qga, "sync") == 0
        out = capsys.readouterr().out.splitlines()
        for line in ("  changed  /etc/network/interfaces",
                     f"  eth0 ({vm.GUEST_MAC}) changed", "    MTU 1450 -> 1400",
                     "    + route 198.51.100.128/25 via 192.0.2.1",
                     "    + DNS server 192.0.2.53"):
            assert line in out, out
        assert any(line.startswith("applied: the guest's files were updated") for line in out)
        for line in ("mtu 1400", "dns-nameservers 192.0.2.1 192.0.2.53",
                     "up ip route add 198.51.100.128/25 via 192.0.2.1 dev eth0"):
            assert line in day2.eni(), day2.eni()
        assert day2.cli(qga, "sync") == 0  # again: nothing to change
        assert "nothing to change: the guest was not touched" in capsys.readouterr().out

        # Detach: the NIC, then its config; the index freed, the port unbound.
        assert day2.cli(qga, "hotplug", "detach", "--port", day2.spare.id, "--qmp",
                        qmp) == 0
        out = capsys.readouterr().out.splitlines()
        assert day2.rec.calls == ["attach eth1", "detach eth1"]
        assert f"eth1 ({vm.HOTPLUG_MAC}) detached; index 1 freed" in out
        assert tenant.tags(day2.spare.id) == []
        port = tenant.admin.network.get_port(day2.spare.id)
        assert (port.device_id, port.device_owner) == ("", "")
        assert "eth1" not in day2.eni()
        assert "mtu 1400" in day2.eni()
        assert _service_nics(day2.iid, day2.image) == [("eth0", vm.GUEST_MAC)]
        # Attached again, it takes the lowest free index again.
        assert day2.cli(qga, "hotplug", "attach", "--port", day2.spare.id, "--qmp", qmp,
                        "--no-wait") == 0
        assert tenant.tags(day2.spare.id) == [f"netinject:{day2.iid}:1"]
    finally:
        qga.stop()


def test_a_port_of_another_instance_is_refused(
        day2: Day2, tenant: Tenant, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import QgaAgent

    other = str(uuid.uuid4())
    theirs = _unbound_port(tenant, day2.net, "fa:16:3e:00:03:01",
                           [{"subnet_id": day2.subnet.id, "ip_address": "192.0.2.30"}],
                           device_id=other)
    before = snapshot(day2.root)
    qga = QgaAgent(tmp_path)
    qga.start()
    try:
        for action, status in (("attach", 2), ("detach", 2)):
            args = ["hotplug", action, "--port", theirs.id, "--qmp", "x"]
            assert day2.cli(qga, *args) == status
            err = capsys.readouterr().err
            assert (f"port {theirs.id} belongs to another instance (compute:nova {other}), "
                    f"not server {day2.iid}: nothing was changed") in err, err
        # A port not attached to the server cannot be detached from it.
        assert day2.cli(qga, "hotplug", "detach", "--port", day2.spare.id, "--qmp",
                        "x") == 2
        assert f"port {day2.spare.id} is not attached to server {day2.iid}" in \
            capsys.readouterr().err
    finally:
        qga.stop()
    assert day2.rec.calls == []
    assert snapshot(day2.root) == before
    assert tenant.tags(theirs.id) == []
    assert tenant.admin.network.get_port(theirs.id).device_id == other


def test_nothing_is_written_to_neutron_when_the_guest_did_not_take_the_config(
        day2: Day2, tenant: Tenant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The guest has no agent (guest-exec of it fails): nothing attached, nothing
    written to Neutron (tags, device_id), exit 1."""
    import dataclasses

    from conftest import QgaAgent
    from netinject import hotplug

    side = dataclasses.replace(day2.side, command=(str(tmp_path / "no-agent"),))
    monkeypatch.setattr(hotplug, "GuestSide", lambda: side)
    qga = QgaAgent(tmp_path)
    qga.start()
    try:
        assert day2.cli(qga, "hotplug", "attach", "--port", day2.spare.id, "--qmp",
                        "x") == 1
    finally:
        qga.stop()
    err = capsys.readouterr().err
    assert "eth1 was not attached: the guest's files are unchanged" in err
    assert "is the netinject agent installed in the image?" in err
    assert day2.rec.calls == []
    assert tenant.tags(day2.spare.id) == []
    assert tenant.admin.network.get_port(day2.spare.id).device_id == ""
