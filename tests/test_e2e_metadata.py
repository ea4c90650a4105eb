"""Day 2 on a stock nova, in real guests: hot-plug, detach and drift reach a running
guest through nova's OWN metadata API, triggered by the guest's own udev rule and timer
(issue 23, "Hot-plug as stock nova does it" and "Drift").

Real peers: QEMU guests (the test bed's image of each stack, under TCG here), their
qemu-guest-agent (every check reads the guest's own state: ip -j, its files), the local
OpenStack peer's Neutron, Keystone and Glance, nova's metadata WSGI app under uwsgi
with the instance a real record in nova's database (nova's objects; its info cache
built, grown and shrunk by nova's own neutron.API code, as attach_interface and
detach_interface do), nova's config-drive code for the first boot, and netinject's
vendordata service (gunicorn) as nova's DynamicJSON target.

One stand-in: the signing proxy in front of nova (metadata_proxy, signing exactly as
Neutron's metadata agent does). Neutron's own agent cannot run here: it finds the guest's
port over RPC to neutron-server, which has no message bus on the peer (transport_url =
fake:/), and it is fed by haproxy spawned by a DHCP or L3 agent, none of which run here.
The proxy listens on 169.254.169.254:80 inside the test's network namespace (the
address on its loopback), where the guest's default route (via the subnet's gateway,
the namespace's end of the guest's link) takes the guest's requests, as on a cloud;
its connections to nova stay on this machine's loopback.

The vendordata service runs with its defaults (an answer is served from memory for 5 s
after it was built or checked, then re-checked against Neutron's revisions: a call
soon after another sees the old answer, and the guest asks again). nova's per-instance
metadata cache (``[api] metadata_cache_expiration``) keeps its default 15 s for
ifupdown, 2 s for the other stacks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.openstack import Service, service
from netinject.openstack.metadata_bed import (
    ETH1_FILES,
    RULES,
    addrs,
    agent,
    attach_as_nova,
    change_in_neutron,
    detach_as_nova,
    drifted,
    eth1_config_gone,
    exists,
    expected_routes,
    facts,
    guest_log,
    gw_routes,
    hotplug_nic,
    ip_json,
    make_instance,
    metadata_route,
    run_in_guest,
    set_sync_period,
    wait_for,
)
from netinject.openstack.metadata_proxy import Binding
from netinject.openstack.peer import Peer, Tenant, nova_metadata_api
from netinject.vm import image as images
from netinject.vm import testbed as vm
from netinject.vm.harness import BootSpec, kvm_usable, running
from netinject.vm.progress import Progress

pytestmark = [pytest.mark.e2e, pytest.mark.openstack, pytest.mark.root]

VARIANTS = vm.INJECT_VARIANTS
# nova's [api] metadata_cache_expiration per stack: nova's default (15 s) for ifupdown.
EXPIRATION = {"ifupdown": 15, "networkd": 2, "netplan": 2, "nm": 2}
PERIOD = 60  # the timer's period in /etc/netinject/sync.conf (the agent's floor)


@pytest.fixture(scope="module")
def boot_images() -> tuple[dict[str, images.VariantImage], str]:
    progress = Progress()
    built = {stack: images.build_variant(v, progress) for stack, v in VARIANTS.items()}
    accel = "kvm" if kvm_usable(built["ifupdown"]) else "tcg"
    return built, accel


@pytest.fixture(scope="module")
def vendordata(openstack_peer: Peer, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Service]:
    with service(tmp_path_factory.mktemp("vd"), "netinject") as svc:
        yield svc


@pytest.fixture
def tenant(openstack_peer: Peer) -> Iterator[Tenant]:
    t = Tenant.open()
    # The peer may be shared with a benchmark filling the same project with a thousand
    # ports: lift its port and network quotas (what an operator would do for it).
    t.admin.network.update_quota(t.project_id, ports=-1, networks=-1, subnets=-1)
    try:
        yield t
    finally:
        t.close()


@pytest.mark.parametrize("stack", list(VARIANTS))
def test_hotplug_detach_and_drift_through_novas_metadata_api(
        boot_images: tuple[dict[str, images.VariantImage], str], openstack_peer: Peer,
        vendordata: Service, tenant: Tenant, stack: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    built, accel = boot_images
    peer = openstack_peer
    cloud = make_instance(peer, tenant, vendordata.url, stack, tmp_path,
                          cache_expiration=EXPIRATION[stack])
    binding = Binding(cloud.iid, tenant.project_id, vm.GUEST_IP)
    spec = BootSpec(built[stack], cloud.drive, False, accel, qga=True,
                    extra_taps=(("tap1", f"{vm.HOTPLUG_HOST_IP}/24"),),
                    system_uuid=cloud.iid)
    nic = hotplug_nic()
    timings: dict[str, float] = {}
    # The guest's http://169.254.169.254: the proxy on that address in the test's
    # namespace, which the guest reaches through its default route.
    with nova_metadata_api(peer, cloud.conf) as nova, running(spec) as guest, \
            metadata_route(nova, binding, guest):
        reply, _ = guest.wait_network()
        assert reply is not None, guest.console()[-3000:]

        # nova builds the instance's metadata on its first read (Keystone, Neutron):
        # read it once from here, so the guest's first ask (5 s per read, its
        # default) is not that one on this busy two-CPU machine.
        facts(nova, binding, "eth0")
        with agent(guest) as ga:
            ga.wait_ready()
            # The metadata path works from the guest, and its answer is the drive's:
            # nothing would change. (On NetworkManager images NM rewrites
            # /etc/resolv.conf itself from the keyfiles' dns= at start, same servers
            # under its own comment: the same directives, so not a change.)
            code, out = run_in_guest(ga, "/usr/sbin/netinject-guest", "sync", "--dry-run")
            assert code == 0, out
            assert "NICs: no NIC" in out, out
            dry_files = [line.strip() for line in out.splitlines()
                         if line.startswith("  ") and "/" in line]
            assert all(line.startswith("mode ") for line in dry_files), out
            _c, modes = run_in_guest(ga, "/usr/bin/stat", "-c", "%a %U %n",
                                     *(f"/{line.split(' /', 1)[1]}" for line in dry_files))
            log_at = len(guest_log(ga))

        # 1. Attach as stock nova does: the port in Neutron, bound to the instance;
        # nova's attach_interface puts it in the info cache; then the hypervisor
        # plugs the NIC (QMP device_add). No DHCP server on tap1.
        port2, arp_s = attach_as_nova(peer, tenant, cloud, guest, nic, "hp")
        assert arp_s is not None, guest.console()[-3000:]
        timings["attach -> first ARP answer"] = arp_s
        want = facts(nova, binding, "eth1")
        with agent(guest) as ga:
            eth1 = ip_json(ga, "addr", "show", "dev", "eth1")[0]
            assert eth1["address"] == vm.HOTPLUG_MAC
            assert addrs(ga, "eth1") == [(vm.HOTPLUG_IP, 24)]
            assert not any(a.get("dynamic") for a in eth1["addr_info"])
            routes = ip_json(ga, "-4", "route", "show", "dev", "eth1")
            assert ("203.0.113.0/24", "link") in {
                (r["dst"], r.get("scope")) for r in routes}, routes
            assert gw_routes(ga, "eth1") == expected_routes(want), (routes, want.routes)
            for path in ETH1_FILES[stack]:
                assert exists(ga, path), path
            assert vm.HOTPLUG_MAC in ga.read_file(RULES).decode()
            assert addrs(ga, "eth0") == [(vm.GUEST_IP, vm.PREFIX)]
            attach_log = guest_log(ga, log_at)
            log_at += len(attach_log)
        asked = attach_log.count("asking again")

        # 2. Detach as stock nova does: the hypervisor lets the NIC go (device_del),
        # then nova's detach_interface unbinds the port and shrinks the cache. The
        # guest's udev remove asks until the answer drops eth1.
        _sent, t1 = detach_as_nova(peer, cloud, guest, nic, port2)
        with agent(guest) as ga:
            wait_for("eth1's config still there after detach",
                     lambda: eth1_config_gone(ga, stack), 120,
                     lambda: guest_log(ga, log_at))
            timings["device_del -> eth1's config gone"] = time.monotonic() - t1
            assert "eth1" not in {i["name"] for i in ga.network_interfaces()}
            detach_log = guest_log(ga, log_at)
            log_at += len(detach_log)

        # 3. Drift: an operator changes the subnet's DNS servers and host routes and
        # the port's fixed IP in Neutron (nova hears of none of the subnet's); the
        # guest's timer, shortened in /etc/netinject/sync.conf, brings them in.
        change_in_neutron(tenant, cloud)
        t2 = time.monotonic()
        with agent(guest) as ga:
            set_sync_period(ga, PERIOD)
            wait_for("the Neutron change did not reach the guest", lambda: drifted(ga),
                     PERIOD + 60 + 90, lambda: (guest_log(ga, log_at), ip_json(ga, "addr"),
                                                ip_json(ga, "route")))
            timings["Neutron change -> applied (timer)"] = time.monotonic() - t2
            want0 = facts(nova, binding, "eth0")
            assert gw_routes(ga, "eth0") == expected_routes(want0)
            assert (vm.HOST_ROUTE, vm.HOST_IP) in gw_routes(ga, "eth0")
            resolv = ga.read_file("/etc/resolv.conf").decode().splitlines()
            assert f"nameserver {vm.HOST_IP}" in resolv, resolv
            code, out = run_in_guest(ga, "/usr/bin/systemctl", "show",
                                     "netinject-sync.timer", "-p",
                                     "LastTriggerUSecMonotonic")
            assert re.search(r"=[1-9]", out), out  # the timer ran the sync
            drift_log = guest_log(ga, log_at)
    with capsys.disabled():
        print(f"\n{stack} (nova metadata_cache_expiration {EXPIRATION[stack]} s): "
              + "; ".join(f"{k} {v:.1f} s" for k, v in timings.items())
              + f"; the add trigger asked again {asked} time(s), the remove trigger "
              f"{detach_log.count('asking again')} time(s)")
        if dry_files:
            print(f"the dry run right after boot: {dry_files}; in the guest: {modes!r}")
        for name, text in (("attach", attach_log), ("detach", detach_log),
                           ("drift", drift_log)):
            print(f"--- guest log, {name}:\n{text.strip()}")


def test_the_peer_cloud_inits_hotplug_through_novas_metadata_api(
        openstack_peer: Peer, vendordata: Service, tenant: Tenant, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The peer of issue 23: Debian's cloud-init (bookworm's 22.4.2) in the ifupdown test
    bed's image, without netinject, on the OpenStack datasource (nova's metadata API, the
    same nova, proxy and cache expiration as the ifupdown run above), its network hotplug
    turned on as cloud-init documents it (``updates: network: when: [boot-new-instance,
    hotplug]``). nova's network_data.json says static only for a subnet without DHCP,
    so both subnets are made with enable_dhcp false; the first boot still needs a DHCP
    server on eth0's link for cloud-init-local's ephemeral DHCP, which reaches the
    metadata API before any config exists. The same attach as nova's; the NIC must
    answer ARP on its static address from cloud-init's own config."""
    peer = openstack_peer
    image = images.build_variant("cloud-init-hotplug", Progress())
    accel = "kvm" if kvm_usable(image) else "tcg"
    cloud = make_instance(peer, tenant, vendordata.url, "ifupdown", tmp_path, dhcp=False,
                          cache_expiration=EXPIRATION["ifupdown"])
    binding = Binding(cloud.iid, tenant.project_id, vm.GUEST_IP)
    spec = BootSpec(image, None, True, accel, qga=True, timeout=400,
                    extra_taps=(("tap1", f"{vm.HOTPLUG_HOST_IP}/24"),),
                    system_uuid=cloud.iid, nova_smbios=True)
    nic = hotplug_nic()
    timings: dict[str, float] = {}
    with nova_metadata_api(peer, cloud.conf) as nova, running(spec) as guest, \
            metadata_route(nova, binding, guest):
        facts(nova, binding, "eth0")  # (nova builds the instance's metadata once)
        reply, _ = guest.wait_network()
        assert reply is not None, guest.console()[-3000:]
        with agent(guest) as ga:
            ga.wait_ready()

            def ci_log() -> str:
                return ga.read_file("/var/log/cloud-init.log").decode(errors="replace")

            # cloud-init's hook does nothing until cloud-init has finished.
            wait_for("cloud-init did not finish", lambda: exists(
                ga, "/run/cloud-init/result.json"), 300, lambda: ci_log()[-4000:])
            # (bookworm's 22.4.2 writes it as 10-..., upstream now as 90-...)
            assert exists(ga, "/etc/udev/rules.d/10-cloud-init-hook-hotplug.rules"), \
                ci_log()[-4000:]
            assert addrs(ga, "eth0") == [(vm.GUEST_IP, vm.PREFIX)]
            eni = ga.read_file("/etc/network/interfaces.d/50-cloud-init").decode()
            assert "iface eth0 inet static" in eni, eni
            ci_at = len(ci_log())

        port2, arp_s = attach_as_nova(peer, tenant, cloud, guest, nic, "ci", dhcp=False)
        with agent(guest) as ga:
            assert arp_s is not None, ci_log()[ci_at:][-6000:]
            timings["attach -> first ARP answer"] = arp_s
            assert addrs(ga, "eth1") == [(vm.HOTPLUG_IP, 24)]
            eni = ga.read_file("/etc/network/interfaces.d/50-cloud-init").decode()
            assert "iface eth1 inet static" in eni, eni
            attach_log = ci_log()[ci_at:]
            ci_at += len(attach_log)

        # Detach as nova does. What cloud-init then does with eth1's config is
        # recorded (upstream dropped the remove hook; bookworm's still has it).
        _sent, t1 = detach_as_nova(peer, cloud, guest, nic, port2)
        with agent(guest) as ga:
            gone = None
            while time.monotonic() - t1 < 90:
                eni = ga.read_file("/etc/network/interfaces.d/50-cloud-init").decode()
                if "eth1" not in eni:
                    gone = time.monotonic() - t1
                    break
                time.sleep(1)
            detach_log = ci_log()[ci_at:]
    hooks = [line for line in attach_log.splitlines()
             if "hotplug_hook.py" in line or "' took " in line or "activators.py" in line
             or "subp.py" in line]
    with capsys.disabled():
        print(f"\ncloud-init hotplug (ifupdown, nova metadata_cache_expiration "
              f"{EXPIRATION['ifupdown']} s): attach -> first ARP answer "
              f"{timings['attach -> first ARP answer']:.1f} s; after device_del eth1's "
              + (f"config gone in {gone:.1f} s" if gone is not None
                 else "config still there after 90 s"))
        print("--- cloud-init's hotplug hook on attach (its steps and commands):\n"
              + "\n".join(hooks[-40:]))
        print("--- cloud-init log after the detach (last lines):\n"
              + "\n".join(detach_log.splitlines()[-15:]))
