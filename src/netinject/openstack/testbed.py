"""The benchmark VM's config drive built by a stock nova: the test bed's port, subnet and
network made in the local peer's real Neutron, an image with support_inject_ip in its
Glance, the vendordata service running, and nova's own InstanceMetadata +
ConfigDriveBuilder building the iso9660 drive (scenario ``nova-vendordata``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ..vm import testbed as vm
from .peer import Peer, PeerError, running_service


def build_nova_drive(out: Path, progress: Callable[[str], None]) -> Path:
    import openstack

    peer = Peer.find()
    os.environ.setdefault("OS_CLIENT_CONFIG_FILE", str(peer.clouds_yaml))
    demo = openstack.connect(cloud="demo")
    admin = openstack.connect(cloud="netinject-admin")
    made: list[tuple[str, str]] = []
    try:
        net = demo.network.create_network(name=f"testbed-{uuid.uuid4().hex[:6]}", mtu=vm.MTU)
        made.append(("network", net.id))
        sub = demo.network.create_subnet(
            network_id=net.id, ip_version=4, cidr=f"192.0.2.0/{vm.PREFIX}",
            gateway_ip=vm.HOST_IP, dns_nameservers=[vm.HOST_IP],
            host_routes=[{"destination": vm.HOST_ROUTE, "nexthop": vm.HOST_IP}])
        # A port of an earlier, interrupted run would hold the MAC on another network:
        # only this network's ports matter, and it is new.
        port = demo.network.create_port(
            network_id=net.id, device_id=vm.INSTANCE_UUID, device_owner="compute:nova",
            mac_address=vm.GUEST_MAC,
            fixed_ips=[{"subnet_id": sub.id, "ip_address": vm.GUEST_IP}])
        made.append(("port", port.id))
        image = demo.image.create_image(name="testbed", disk_format="qcow2",
                                        container_format="bare", support_inject_ip="true")
        made.append(("image", image.id))
        with running_service(peer.state / "testbed-service.log") as url:
            conf = peer.nova_conf("testbed", url)
            target = peer.state / "testbed-drive.iso"
            progress("nova's own code builds the test bed's config drive (iso9660), "
                     "calling the vendordata service")
            [result] = peer.build_drives(conf, [{
                "instance": vm.INSTANCE_UUID, "project": demo.current_project_id,
                "image": image.id, "hostname": "netinject-vm", "ports": [port.id],
                "out": str(target)}])
        if result["error"]:
            raise PeerError(f"nova's drive build failed: {result['error']}")
        shutil.move(target, out)
        return out
    finally:
        for kind, ident in reversed(made):
            with contextlib.suppress(Exception):
                if kind == "port":
                    admin.network.delete_port(ident)
                elif kind == "network":
                    admin.network.delete_network(ident)
                else:
                    admin.image.delete_image(ident)
