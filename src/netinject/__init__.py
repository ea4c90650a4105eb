"""netinject: static network configuration for cloud VMs, injected before the guest's
network service starts, so that no VM waits on DHCP at boot."""

__version__ = "0.2.0"
