"""Build config drives with nova's own code, as nova-compute's libvirt driver does.

This file is not imported by netinject: it is run by the Python of the OpenStack peer's
chroot (scripts/openstack-peer.sh, Debian's python3-nova, OpenStack Zed), where nova is
importable. It reads a JSON request on stdin and prints a JSON result on stdout::

    {"conf": "/srv/peer/nova.conf",
     "builds": [{"instance": UUID, "project": ID, "image": ID, "hostname": NAME,
                 "ports": [PORT_ID, ...],          # the --nic order
                 "out": "/srv/peer/drive.iso",     # null: metadata only, no drive
                 "targets": ["netinject@URL"]}],   # optional: DynamicJSON targets for
                                                   # this build ([]: StaticJSON only)
     "repeat": 1}

For each build it does what ``LibvirtDriver._create_configdrive`` does: nova's
``neutron.API()._build_network_info_model`` against the real Neutron (ports in the given
order, as ``allocate_for_instance`` passes them), ``InstanceMetadata`` (which calls the
vendordata providers, DynamicJSON included, once per metadata version), and
``ConfigDriveBuilder.make_drive``. The instance is nova's own test double
(``fake_instance_obj``); no nova database, API or compute service runs.

Result: {"builds": [{"seconds": S, "metadata_seconds": S, "drive_seconds": S,
"error": null | "Type: text"}...]}.
"""

import json
import sys
import time


def _schema(url: str) -> None:
    """nova's main database schema, created from its models on first use (nova's unit
    tests do the same on SQLite). It stays empty: the instance has no rows, so the block
    device mappings nova reads for the metadata are none, as for a boot from an image."""
    import os

    import sqlalchemy
    from nova.db.main import models

    path = url.split("sqlite:///", 1)[-1]
    if not os.path.exists(path):
        models.BASE.metadata.create_all(sqlalchemy.create_engine(url))


def main() -> int:
    req = json.load(sys.stdin)
    import nova.conf
    from nova import objects

    conf = nova.conf.CONF
    conf([], project="nova", default_config_files=[req["conf"]])
    objects.register_all()
    _schema(conf.database.connection)
    from nova import context as nova_context
    from nova.api.metadata import base as instance_metadata
    from nova.network import model as network_model
    from nova.network import neutron
    from nova.tests.unit import fake_instance
    from nova.virt import configdrive

    ctx = nova_context.get_admin_context()
    api = neutron.API()
    results = []
    for _ in range(int(req.get("repeat", 1))):
        for build in req["builds"]:
            if "targets" in build:  # per build, so contenders interleave in one process
                targets = build["targets"] or []
                conf.set_override("vendordata_providers",
                                  ["StaticJSON", "DynamicJSON"] if targets else ["StaticJSON"],
                                  "api")
                conf.set_override("vendordata_dynamic_targets", targets, "api")
            t0 = time.perf_counter()
            out: dict[str, object] = {"error": None}
            try:
                inst = fake_instance.fake_instance_obj(
                    ctx, uuid=build["instance"], project_id=build["project"],
                    image_ref=build["image"], hostname=build["hostname"],
                    display_name=build["hostname"], user_data=None, metadata={},
                    system_metadata={}, expected_attrs=["metadata", "system_metadata"])
                # The compute manager's cache is empty for a new instance (and lives in
                # nova's database, which does not run here).
                inst.info_cache = objects.InstanceInfoCache(
                    instance_uuid=build["instance"], network_info=network_model.NetworkInfo())
                client = neutron.get_client(ctx, admin=True)
                ports = client.list_ports(device_id=build["instance"])["ports"]
                by_id = {p["id"]: p for p in ports}
                order = [p for p in build["ports"] if p in by_id]
                nets = client.list_networks(
                    id=sorted({by_id[p]["network_id"] for p in order}))["networks"]
                nw_info = api._build_network_info_model(
                    ctx, inst, networks=nets, port_ids=order, admin_client=client)
                t1 = time.perf_counter()
                md = instance_metadata.InstanceMetadata(
                    inst, content=[], extra_md={}, network_info=nw_info)
                if build.get("out"):
                    with configdrive.ConfigDriveBuilder(instance_md=md) as cdb:
                        cdb.make_drive(build["out"])
                else:  # what the metadata service would serve: every version's files
                    for _path in md.metadata_for_config_drive():
                        pass
                t2 = time.perf_counter()
                out.update(metadata_seconds=t1 - t0, drive_seconds=t2 - t1)
            except Exception as exc:  # reported to the caller, which asserts on it
                out["error"] = f"{type(exc).__name__}: {exc}"
            out["seconds"] = time.perf_counter() - t0
            results.append(out)
    json.dump({"builds": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
