"""The test bed VM's identity (not to be confused with model.Instance): its instance
uuid and one NIC on a documentation range, inside the network namespace the harness
creates (nothing leaves this machine); and the second NIC the hot-plug tests attach."""

from __future__ import annotations

from typing import Any

GUEST_IP = "192.0.2.10"
HOST_IP = "192.0.2.1"
PREFIX = 24
GUEST_MAC = "fa:16:3e:12:34:56"
INSTANCE_UUID = "5f0c2a1e-7b3d-4c8e-9a6f-1d2e3c4b5a69"
PORT_ID = "2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d"
NETWORK_ID = "3b4c5d6e-7f80-4b9c-8d1e-2f3a4b5c6d7e"
SUBNET_ID = "4c5d6e7f-8091-4cad-9e2f-3a4b5c6d7e8f"
HOST_ROUTE = "198.51.100.0/24"
MTU = 1450

# Second NIC for hot-plug.
HOTPLUG_MAC = "fa:16:3e:12:34:57"
HOTPLUG_IP = "203.0.113.10"
HOTPLUG_HOST_IP = "203.0.113.1"
HOTPLUG_PORT_ID = "5d6e7f80-91a2-4bbe-8f3a-4b5c6d7e8f90"
HOTPLUG_NETWORK_ID = "6e7f8091-a2b3-4ccf-9a4b-5c6d7e8f90a1"
HOTPLUG_SUBNET_ID = "7f8091a2-b3c4-4de0-8b5c-6d7e8f90a1b2"

# A day-2 change an operator makes in Neutron: one more host route and DNS server on the
# first NIC's subnet (the day-2 tests and both hot-plug benches).
NEW_ROUTE = "198.51.100.128/25"
NEW_DNS = "192.0.2.53"
# Files the agent installs at the test bed's first boot, per stack: the stack's own
# (networkd: .network and .link; netplan: its YAML and networkd's drop-in), the udev
# rules, resolv.conf and hostname.
STACK_FILES = {"ifupdown": 4, "networkd": 5, "netplan": 5, "nm": 4}
# Each stack's test-bed image with the agent (image variants, vm/image.py).
INJECT_VARIANTS = {"ifupdown": "inject", "networkd": "inject-networkd",
                   "netplan": "inject-netplan", "nm": "inject-nm"}


def document(support_inject_ip: bool = True, uuid: str = INSTANCE_UUID) -> dict[str, Any]:
    """The instance document for the benchmark VM (Neutron field names)."""
    return {
        "instance": {"uuid": uuid, "hostname": "netinject-vm", "name": "netinject-vm"},
        "image": {"properties": {"support_inject_ip": "true" if support_inject_ip else "false",
                                 "os_distro": "debian"}},
        "system_metadata": {},
        "ports": [{"id": PORT_ID, "mac_address": GUEST_MAC, "network_id": NETWORK_ID,
                   "fixed_ips": [{"subnet_id": SUBNET_ID, "ip_address": GUEST_IP}]}],
        "subnets": [{"id": SUBNET_ID, "network_id": NETWORK_ID, "ip_version": 4,
                     "cidr": f"192.0.2.0/{PREFIX}", "gateway_ip": HOST_IP, "enable_dhcp": True,
                     "dns_nameservers": [HOST_IP],
                     "host_routes": [{"destination": HOST_ROUTE, "nexthop": HOST_IP}]}],
        "networks": [{"id": NETWORK_ID, "mtu": MTU}],
    }


def hotplug_port() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(port, subnet, network) of the NIC the hot-plug test attaches."""
    port = {"id": HOTPLUG_PORT_ID, "mac_address": HOTPLUG_MAC,
            "network_id": HOTPLUG_NETWORK_ID,
            "fixed_ips": [{"subnet_id": HOTPLUG_SUBNET_ID, "ip_address": HOTPLUG_IP}]}
    subnet = {"id": HOTPLUG_SUBNET_ID, "network_id": HOTPLUG_NETWORK_ID, "ip_version": 4,
              "cidr": "203.0.113.0/24", "gateway_ip": HOTPLUG_HOST_IP, "enable_dhcp": True,
              "dns_nameservers": [], "host_routes": []}
    network = {"id": HOTPLUG_NETWORK_ID, "mtu": 1500}
    return port, subnet, network
