"""Real guests: a Debian guest image builder, a QEMU boot harness with an ARP prober in
a network namespace, and the time-to-network benchmark."""
