"""Boot scenarios: which image, which config drive, whether a DHCP server answers."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import drive
from ..guest.stacks import STACKS
from ..render import Options
from ..sources.neutron import parse_document
from . import image as images
from . import testbed as vm
from .apt import SUITE
from .harness import BootSpec


@dataclass(frozen=True)
class Scenario:
    name: str
    variant: str
    drive: str  # "inject" (payload), "legacy" (no payload), "corrupt" (damaged payload),
    # "nova" (a stock nova's drive, the payload in vendor_data2.json)
    dhcp_server: bool
    about: str
    # A later boot of the same instance: the run boots a private writable copy of the
    # image once (its first boot, not measured), then measures the second boot.
    later: bool = False

    @property
    def network_unit(self) -> str:
        """The unit this scenario's image brings its network up with."""
        return STACK_UNITS[images.VARIANTS[images.parse_variant(self.variant)[0]]]

    @property
    def agent_unit(self) -> str | None:
        """The unit that puts the network config in place in this scenario's image."""
        return AGENT_UNITS.get(images.parse_variant(self.variant)[0])

    @property
    def release(self) -> str:
        """The Debian release of this scenario's image."""
        return images.parse_variant(self.variant)[1]


AGENT_UNITS = {"inject": "netinject.service", "cloud-init": "cloud-init-local.service",
               "glean": "glean@eth0.service", "inject-glean": "netinject.service",
               "inject-networkd": "netinject.service",
               "inject-netplan": "netinject.service", "inject-nm": "netinject.service"}
# The unit each image's stack brings the network up with (what the agent must finish
# before), by the recipe of the scenario's image (its descriptor's daemon).
STACK_UNITS = {s.name: s.daemon for s in STACKS}
NETWORK_UNITS = {f"inject-{s}": STACK_UNITS[s] for s in images.STACKS}
NETWORK_UNITS["inject"] = STACK_UNITS["ifupdown"]
STACK_SCENARIOS = tuple(f"{kind}-{stack}" for stack in images.STACKS
                        for kind in ("inject", "baked", "dhcp-timeout"))
# How the test bed's image of each stack is made (scenario descriptions).
STACK_IMAGES = {"networkd": "systemd-networkd alone",
                "netplan": "netplan 0.106 on systemd-networkd", "nm": "NetworkManager 1.42"}


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("dhcp-timeout", "dhcp", "legacy", False,
             "stock image, no DHCP server answers: the seed's stall"),
    Scenario("dhcp", "dhcp", "legacy", True, "stock image, dnsmasq answering in the namespace"),
    Scenario("baked-static", "baked-static", "legacy", False,
             "static config baked into the image: the floor"),
    Scenario("inject", "inject", "inject", False, "netinject agent + config drive payload"),
    Scenario("inject-cloud-init", "inject-cloud-init", "user-data", False,
             "netinject agent + cloud-init kept (SSH keys, user-data) in the same image"),
    Scenario("cloud-init", "cloud-init", "inject", False,
             "Debian cloud-init reading the same drive's network_data.json"),
    Scenario("cloud-init-user-data", "cloud-init", "user-data", False,
             "Debian cloud-init alone, the drive and user data of inject-cloud-init"),
    Scenario("glean", "glean", "inject", False,
             "OpenStack's glean (PyPI) reading the same drive's network_data.json"),
    Scenario("inject-glean", "inject-glean", "inject", False,
             "netinject agent + glean kept in the same image (glean without its network "
             "part on an instance the agent configured)"),
    Scenario("inject-later", "inject", "inject", False,
             "inject, second boot of the same instance (the launcher decides alone)", True),
    Scenario("cloud-init-later", "cloud-init", "inject", False,
             "cloud-init, second boot of the same instance (init-local runs again)", True),
    Scenario("glean-later", "glean", "inject", False,
             "glean, second boot of the same instance (its units skip: config exists)",
             True),
    *(sc for stack, about in STACK_IMAGES.items()
      for sc in (
        Scenario(f"inject-{stack}", f"inject-{stack}", "inject", False,
                 f"{about}, no ifupdown: the agent installs the drive's {stack} files"),
        Scenario(f"baked-{stack}", f"baked-{stack}", "legacy", False,
                 f"{about}: the static config baked into the image (its floor)"),
        Scenario(f"dhcp-timeout-{stack}", stack, "legacy", False,
                 f"{about}, stock DHCP config, no DHCP server answers"))),
    Scenario("nova-vendordata", "inject", "nova", False,
             "inject image, drive built by nova's own code (iso9660) with the vendordata "
             "service's answer (needs scripts/openstack-peer.sh start)"),
    Scenario("legacy-image", "dhcp", "legacy", True,
             "image without support_inject_ip: DHCP path still works"),
    Scenario("corrupt-drive", "inject", "corrupt", True,
             "inject image, damaged drive: the agent steps aside, DHCP brings it up"),
)}
DEFAULT_SCENARIOS = ("inject", "baked-static", "dhcp", "glean", "cloud-init",
                     "dhcp-timeout")
LATER_SCENARIOS = ("inject-later", "glean-later", "cloud-init-later")


# The user data of the "user-data" drive: cloud-init beside the agent must still run it.
# (locale: false: the test bed's minbase images have no locales package, so cloud-init's
# locale module fails there, with or without netinject: measured, update-locale exit 255.)
USER_DATA = (b"#cloud-config\n"
             b"locale: false\n"
             b"write_files:\n"
             b"  - path: /var/lib/netinject-test/user-data-ran\n"
             b"    content: \"cloud-init ran the user data\\n\"\n")
USER_DATA_MARK = "/var/lib/netinject-test/user-data-ran"


def build_drive(kind: str, out: Path, progress: images.Progress | None = None) -> Path:
    """The benchmark VM's config drive of the given kind."""
    if kind == "nova":
        from ..openstack.testbed import build_nova_drive

        return build_nova_drive(out, progress or (lambda _t: None))
    inject = kind != "legacy"
    instance = parse_document(vm.document(support_inject_ip=inject)).instance
    drive.build(instance, out, "vfat", Options(),
                USER_DATA if kind == "user-data" else None)
    if kind == "corrupt":
        corrupt(out)
    return out


def corrupt(image: Path) -> None:
    """Damage the payload's interfaces file on the drive (the manifest hash then fails)."""
    data = bytearray(image.read_bytes())
    at = data.find(b"iface eth0 inet static")
    if at < 0:
        raise ValueError(f"{image}: no payload to corrupt")
    data[at:at + 5] = b"IFACE"
    image.write_bytes(bytes(data))


def scenario(name: str) -> Scenario:
    """A scenario by name: one of SCENARIOS (bookworm), or ``NAME@RELEASE`` for the same
    scenario on another Debian release's images (``inject@trixie``,
    ``baked-networkd@bullseye``). ValueError names what is unknown."""
    base, at, release = name.partition("@")
    if base not in SCENARIOS:
        raise ValueError(f"unknown scenario {base!r}; known: {', '.join(SCENARIOS)} "
                         f"(each also as NAME@RELEASE, RELEASE one of "
                         f"{', '.join(images.RELEASES)})")
    s = SCENARIOS[base]
    if not at:
        return s
    if release not in images.RELEASES:
        raise ValueError(f"unknown release {release!r} in scenario {name!r}; known: "
                         f"{', '.join(images.RELEASES)}")
    if s.drive == "nova":
        raise ValueError(f"{base} runs on the OpenStack peer's bookworm image only")
    variant = s.variant if release == SUITE else f"{s.variant}@{release}"
    return dataclasses.replace(s, name=name, variant=variant,
                               about=f"{s.about} (Debian {release})")


class Prepared:
    """Images and drives for a set of scenarios, built once per run."""

    def __init__(self, names: tuple[str, ...], progress: images.Progress,
                 workdir: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="netinject-drives-")
        self.dir = workdir or Path(self._tmp.name)
        self.scenarios = [scenario(n) for n in names]
        self.images = {v: images.build_variant(v, progress)
                       for v in dict.fromkeys(s.variant for s in self.scenarios)}
        self.drives = {k: build_drive(k, self.dir / f"{k}.img", progress)
                       for k in dict.fromkeys(s.drive for s in self.scenarios)}

    def spec(self, name: str, accel: str, **kw: object) -> BootSpec:
        s = scenario(name)
        return BootSpec(self.images[s.variant], self.drives[s.drive], s.dhcp_server, accel,
                        **kw)  # type: ignore[arg-type]

    def close(self) -> None:
        self._tmp.cleanup()
