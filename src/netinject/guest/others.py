"""The image's other first-boot agents: cloud-init, which real cloud images keep for SSH
keys and user-data, next to the agent.

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
"""

import os

from .errors import AgentError
from .install import write_atomic
from .log import Log
from .paths import isdir, join, lexists, no_symlink_parents

CLOUD_INIT_DIR = "etc/cloud/cloud.cfg.d"
CLOUD_INIT_SWITCH = CLOUD_INIT_DIR + "/99-netinject-network.cfg"


def cloud_init_switch_text(instance: str) -> bytes:
    return ("# Written by netinject's agent at the first boot of instance %s: it installed\n"
            "# this instance's static network config from the config drive, so cloud-init\n"
            "# must not render its own (cloud-init's documented switch; everything else\n"
            "# cloud-init does still runs). The agent removes this file at a boot where it\n"
            "# steps aside; netinject-guest uninstall removes it too.\n"
            "network: {config: disabled}\n" % instance).encode("ascii")


def step_cloud_init_aside(root: str, instance: str, log: Log) -> None:
    """After the agent installed ``instance``'s config: cloud-init's network rendering
    off, if cloud-init is there. A failure is logged (the config is in place)."""
    if not isdir(join(root, CLOUD_INIT_DIR)):
        return
    try:
        no_symlink_parents(root, CLOUD_INIT_SWITCH)
        write_atomic(root, CLOUD_INIT_SWITCH, cloud_init_switch_text(instance), 0o644)
        log("cloud-init's network config turned off for this instance (/%s)"
            % CLOUD_INIT_SWITCH)
    except (OSError, AgentError) as exc:
        log("could not turn cloud-init's network config off (/%s): %s"
            % (CLOUD_INIT_SWITCH, exc))


def give_cloud_init_back(root: str, log: Log) -> None:
    """The agent stepped aside: cloud-init does the networking, as without netinject."""
    path = join(root, CLOUD_INIT_SWITCH)
    if not lexists(path):
        return
    try:
        no_symlink_parents(root, CLOUD_INIT_SWITCH)
        os.unlink(path)
        log("cloud-init's network config is on again (removed /%s)" % CLOUD_INIT_SWITCH)
    except (OSError, AgentError) as exc:
        log("could not remove /%s: %s" % (CLOUD_INIT_SWITCH, exc))
