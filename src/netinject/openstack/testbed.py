"""The benchmark VM's config drive built by a stock nova: the test bed's port, subnet and
network made in the local peer's real Neutron, an image with support_inject_ip in its
Glance, the vendordata service running, and nova's own InstanceMetadata +
ConfigDriveBuilder building the iso9660 drive (scenario ``nova-vendordata``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ..vm import testbed as vm
from .peer import Peer, PeerError, Tenant, running_service


def build_nova_drive(out: Path, progress: Callable[[str], None]) -> Path:
    peer = Peer.find()
    os.environ.setdefault("OS_CLIENT_CONFIG_FILE", str(peer.clouds_yaml))
    tenant = Tenant.open()
    try:
        net = tenant.network(f"testbed-{uuid.uuid4().hex[:6]}", mtu=vm.MTU)
        sub = tenant.subnet(net, ip_version=4, cidr=f"192.0.2.0/{vm.PREFIX}",
                            gateway_ip=vm.HOST_IP, dns_nameservers=[vm.HOST_IP],
                            host_routes=[{"destination": vm.HOST_ROUTE,
                                          "nexthop": vm.HOST_IP}])
        # A port of an earlier, interrupted run would hold the MAC on another network:
        # only this network's ports matter, and it is new.
        port = tenant.port(net, vm.INSTANCE_UUID, vm.GUEST_MAC,
                           [{"subnet_id": sub.id, "ip_address": vm.GUEST_IP}])
        image = tenant.image(inject=True)
        with running_service(peer.state / "testbed-service.log") as url:
            conf = peer.nova_conf("testbed", url)
            target = peer.state / "testbed-drive.iso"
            progress("nova's own code builds the test bed's config drive (iso9660), "
                     "calling the vendordata service")
            [result] = peer.build_drives(conf, [{
                "instance": vm.INSTANCE_UUID, "project": tenant.project_id,
                "image": image.id, "hostname": "netinject-vm", "ports": [port.id],
                "out": str(target)}])
        if result["error"]:
            raise PeerError(f"nova's drive build failed: {result['error']}")
        shutil.move(target, out)
        return out
    finally:
        tenant.close()
