"""The image's other first-boot agents: cloud-init, which real cloud images keep for SSH
keys and user-data, and OpenStack's glean (diskimage-builder's simple-init), next to the
agent.

cloud-init's local stage (``cloud-init-local.service``, ordered after the agent's unit)
renders the datasource's network config (the config drive's ``network_data.json``) into
``/etc/network/interfaces.d/50-cloud-init`` or ``/etc/netplan/50-cloud-init.yaml``: on a
DHCP subnet that says DHCP, beside the agent's static config (netplan merges every file
it reads). Its documented switch turns that off and nothing else (SSH keys, user-data,
the hostname still run): ``network: {config: disabled}`` in a ``cloud.cfg.d`` file.
cloud-init 22.4 (Debian 12) reads it as its system config, which for the ConfigDrive and
OpenStack datasources takes precedence over the datasource's
(``DataSource.network_config_sources``: command line, initramfs, system config,
datasource; ``Init._find_networking_config`` returns at the first that disables).

So at an instance's first boot where the agent installed a config, it writes that file
(``CLOUD_INIT_SWITCH``, naming the instance); on a boot where it steps aside (no drive,
no payload, a drive it does not trust, a rollback) it removes it, so a new instance
made from this image gets cloud-init's networking again. Later boots of the same
instance keep it. Images without cloud-init (no ``/etc/cloud/cloud.cfg.d``) get nothing.

glean (PyPI 1.25.1) runs per NIC from udev (``glean@<nic>.service``, ``glean-nm@``) or
once (``glean-networkd.service``): ``python-glean`` writes the NIC's config from the
drive's ``network_data.json`` (interfaces.d/<nic>.cfg, a keyfile, a .network file) and
the DNS servers, and with its install's ``--ssh``/``--hostname`` the SSH keys and the
hostname; its unit then brings the NIC up. Its documented switch for the network part
alone is ``--skip-network`` ("Do not write network info": no NIC config, no DNS; SSH
keys and hostname still run). ``netinject-guest install`` gives each glean unit of the
image a drop-in (``GLEAN_DROPIN``): ordered after the agent, the glean command line
extended by ``$NETINJECT_GLEAN_ARGS`` from ``GLEAN_ENV`` (a missing file: nothing
added). The agent writes that file (``--skip-network``) exactly when it writes
cloud-init's switch, and removes it when it removes that.
"""

import os

from .errors import AgentError
from .install import write_atomic
from .log import Log
from .paths import isdir, join, lexists, no_symlink_parents

CLOUD_INIT_DIR = "etc/cloud/cloud.cfg.d"
CLOUD_INIT_SWITCH = CLOUD_INIT_DIR + "/99-netinject-network.cfg"
# glean's units (glean-install: per-NIC for ifupdown and NetworkManager, one for networkd)
# and the drop-in install gives each (in /etc/systemd/system/<unit>.d/).
GLEAN_UNITS = ("glean@.service", "glean-nm@.service", "glean-networkd.service")
GLEAN_DROPIN = "50-netinject.conf"
GLEAN_ENV = "etc/netinject/glean.env"
GLEAN_VAR = "NETINJECT_GLEAN_ARGS"


# Each other agent's switch file (what the agent writes on an instance it configured).
SWITCHES = (("cloud-init", CLOUD_INIT_SWITCH), ("glean", GLEAN_ENV))


def glean_dropin_path(unit: str) -> str:
    return "etc/systemd/system/%s.d/%s" % (unit, GLEAN_DROPIN)


def glean_switch_text(instance: str) -> bytes:
    return ("# Written by netinject's agent at the first boot of instance %s: it installed\n"
            "# this instance's static network config from the config drive, so glean must\n"
            "# not write its own (glean's --skip-network: no NIC config, no DNS; SSH keys\n"
            "# and the hostname still run). Read by glean's units through netinject's\n"
            "# drop-ins (%s). The agent removes this file at a boot where it steps aside.\n"
            "%s=--skip-network\n" % (instance, GLEAN_DROPIN, GLEAN_VAR)).encode("ascii")


def _switches(root: str, instance: str) -> "list[tuple[str, str, bytes]]":
    """(who, path, text) of the switch of each other agent this image has."""
    out = []
    if isdir(join(root, CLOUD_INIT_DIR)):
        out.append(("cloud-init", CLOUD_INIT_SWITCH, cloud_init_switch_text(instance)))
    if any(lexists(join(root, glean_dropin_path(u))) for u in GLEAN_UNITS):
        out.append(("glean", GLEAN_ENV, glean_switch_text(instance)))
    return out


def cloud_init_switch_text(instance: str) -> bytes:
    return ("# Written by netinject's agent at the first boot of instance %s: it installed\n"
            "# this instance's static network config from the config drive, so cloud-init\n"
            "# must not render its own (cloud-init's documented switch; everything else\n"
            "# cloud-init does still runs). The agent removes this file at a boot where it\n"
            "# steps aside; netinject-guest uninstall removes it too.\n"
            "network: {config: disabled}\n" % instance).encode("ascii")


def step_others_aside(root: str, instance: str, log: Log) -> None:
    """After the agent installed ``instance``'s config: cloud-init's and glean's network
    config off, where they are there. A failure is logged (the config is in place)."""
    for who, rel, text in _switches(root, instance):
        try:
            no_symlink_parents(root, rel)
            write_atomic(root, rel, text, 0o644)
            log("%s's network config turned off for this instance (/%s)" % (who, rel))
        except (OSError, AgentError) as exc:
            log("could not turn %s's network config off (/%s): %s" % (who, rel, exc))


def give_others_back(root: str, log: Log) -> None:
    """The agent stepped aside: cloud-init and glean do the networking, as without
    netinject."""
    for who, rel in SWITCHES:
        path = join(root, rel)
        if not lexists(path):
            continue
        try:
            no_symlink_parents(root, rel)
            os.unlink(path)
            log("%s's network config is on again (removed /%s)" % (who, rel))
        except (OSError, AgentError) as exc:
            log("could not remove /%s: %s" % (rel, exc))
