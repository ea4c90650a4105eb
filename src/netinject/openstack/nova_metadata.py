"""nova's own metadata API (OpenStack Zed, the peer's python3-nova) serving a real instance.

This file is not imported by netinject: the Python of the OpenStack peer's chroot
(scripts/openstack-peer.sh) runs it, in three ways, all with a nova.conf and an
api-paste.ini in one directory (``/srv/peer/<dir>``, written by ``peer.NovaMetadata``):

``python3 nova_metadata.py setup DIR``
    nova's API database, its cell0 database and the cell1 ("main") database on SQLite,
    made by nova-manage's own commands (``ApiDbCommands.sync``, ``CellV2Commands.
    map_cell0``, ``DbCommands.sync``, ``CellV2Commands.create_cell``): alembic migrations
    and the two cell mappings. The metadata handler needs them: ``base.
    get_metadata_by_instance_id`` looks up ``InstanceMapping.get_by_instance_uuid`` in
    the API database, then ``Instance.get_by_uuid`` inside ``context.target_cell`` of
    the mapping's cell; ``wsgi_app._setup_service`` scatters over every cell mapping
    (``utils.raise_if_old_compute``) and writes the ``nova-metadata`` service row.

``python3 nova_metadata.py create DIR`` (JSON on stdin)
    ``{"instance": UUID, "project": ID, "user": ID, "image": ID, "hostname": NAME,
    "ports": [PORT_ID, ...]}``: an ACTIVE instance record in cell1 with nova's objects
    (``objects.Instance(...).create()`` with an empty info cache, and its
    ``InstanceMapping``), then its network info cache filled as ``allocate_for_instance``
    does at boot: ``neutron.API().get_instance_nw_info(networks=, port_ids=,
    preexisting_port_ids=)``, which builds the model from the real Neutron and saves it
    with ``update_instance_cache_with_nw_info``. Prints ``{"vifs": [PORT_ID, ...]}``.

``python3 nova_metadata.py attach DIR`` (JSON on stdin)
    ``{"instance": UUID, "ports": [PORT_ID, ...]}``: what ``ComputeManager.
    attach_interface`` does to the cache for an existing port
    (``allocate_for_instance`` -> ``get_instance_nw_info`` with that port): the cache
    gets the new VIF after the ones it has. Prints ``{"vifs": [...]}`` (the whole cache).

``python3 nova_metadata.py detach DIR`` (JSON on stdin)
    ``{"instance": UUID, "port": PORT_ID}``: what ``ComputeManager.detach_interface``
    does once the hypervisor has let the NIC go: ``neutron.API().
    deallocate_port_for_instance`` (a port the user brought is unbound in Neutron:
    device_id, device_owner and binding host cleared; its VirtualInterface, if any, is
    destroyed), which saves the info cache rebuilt from Neutron. Prints ``{"vifs":
    [...]}`` (the whole cache).

``uwsgi --wsgi-file nova_metadata.py`` (env ``OS_NOVA_CONFIG_DIR=DIR``)
    imported (not run), it is the WSGI script nova's ``nova-metadata-wsgi`` is:
    ``nova.api.metadata.wsgi.init_application()``, which reads
    ``OS_NOVA_CONFIG_DIR/api-paste.ini`` and ``nova.conf`` and loads the paste app
    ``metadata`` (``MetadataRequestHandler`` behind oslo's cors and http_proxy_to_wsgi).
"""

import json
import os
import sys
from typing import Any


def _conf(directory: str) -> Any:
    import nova.conf
    from nova import config, objects

    conf = nova.conf.CONF
    config.parse_args(["nova-metadata-setup"], default_config_files=[
        os.path.join(directory, "nova.conf")])
    objects.register_all()
    return conf


def setup(directory: str) -> int:
    conf = _conf(directory)
    from nova.cmd import manage

    if manage.ApiDbCommands().sync() not in (None, 0):
        return 1
    cell0 = conf.api_database.connection.replace("-api.db", "-cell0.db")
    if manage.CellV2Commands().map_cell0(database_connection=cell0) not in (None, 0):
        return 1
    if manage.DbCommands().sync() not in (None, 0):  # cell1 ([database]) and cell0
        return 1
    code = manage.CellV2Commands().create_cell(
        name="cell1", database_connection=conf.database.connection,
        transport_url=conf.transport_url)
    return 0 if code in (None, 0) else 1


def _cell_context(instance_uuid: str | None = None) -> tuple[Any, Any, Any]:
    """An admin context, cell1 (or the instance's cell) and a context manager targeting
    it."""
    from nova import context as nova_context
    from nova import objects

    ctx = nova_context.get_admin_context()
    if instance_uuid is None:
        cell = next(c for c in objects.CellMappingList.get_all(ctx) if not c.is_cell0())
    else:
        cell = objects.InstanceMapping.get_by_instance_uuid(ctx, instance_uuid).cell_mapping
    return ctx, cell, nova_context.target_cell(ctx, cell)


def _nets_in_port_order(client: Any, ports: list[str]) -> list[dict[str, Any]]:
    """One Neutron network per port, in the port order (as allocate_for_instance passes
    them to get_instance_nw_info)."""
    by_id = {p["id"]: p for p in client.list_ports(id=ports)["ports"]}
    missing = [p for p in ports if p not in by_id]
    if missing:
        raise SystemExit(f"no such ports in Neutron: {missing}")
    nets = client.list_networks(id=sorted({by_id[p]["network_id"] for p in ports}))
    net = {n["id"]: n for n in nets["networks"]}
    return [net[by_id[p]["network_id"]] for p in ports]


def _refresh(ctx: Any, req: dict[str, Any]) -> list[str]:
    """The instance's info cache built again by nova's code for ``req["ports"]`` (as
    boot and attach_interface build it); the VIF ids in it."""
    from nova import objects
    from nova.network import neutron

    instance = objects.Instance.get_by_uuid(ctx, req["instance"],
                                            expected_attrs=["info_cache"])
    ports = [str(p) for p in req["ports"]]
    api = neutron.API()
    client = neutron.get_client(ctx, admin=True)
    nets = _nets_in_port_order(client, ports)
    nw_info = api.get_instance_nw_info(ctx, instance, networks=nets, port_ids=ports,
                                       admin_client=client, preexisting_port_ids=ports)
    return [vif["id"] for vif in nw_info]


def create(directory: str, req: dict[str, Any]) -> dict[str, Any]:
    _conf(directory)
    from nova import objects
    from nova.compute import power_state, vm_states
    from nova.network import model as network_model
    from oslo_utils import timeutils

    ctx, cell, cctx = _cell_context()
    with cctx as c:
        flavor = objects.Flavor(
            flavorid="netinject-m1", name="netinject.m1", memory_mb=512, vcpus=1,
            root_gb=1, ephemeral_gb=0, swap=0, rxtx_factor=1.0, vcpu_weight=0,
            disabled=False, is_public=True, extra_specs={}, projects=[], id=1)
        inst = objects.Instance(
            context=c, uuid=req["instance"], project_id=req["project"],
            user_id=req["user"], image_ref=req["image"], hostname=req["hostname"],
            display_name=req["hostname"], host="netinject-peer", node="netinject-peer",
            launched_on="netinject-peer", availability_zone="nova",
            vm_state=vm_states.ACTIVE, power_state=power_state.RUNNING, task_state=None,
            launched_at=timeutils.utcnow(), memory_mb=512, vcpus=1, root_gb=1,
            ephemeral_gb=0, instance_type_id=1, flavor=flavor, old_flavor=None,
            new_flavor=None, metadata={}, system_metadata={}, user_data=None,
            config_drive="True", keypairs=objects.KeyPairList(objects=[]),
            info_cache=objects.InstanceInfoCache(
                network_info=network_model.NetworkInfo()))
        inst.create()
        # nova's API makes the mapping (cell unknown), the conductor sets the cell once
        # the instance is in it: here at once.
        objects.InstanceMapping(
            context=ctx, instance_uuid=req["instance"], project_id=req["project"],
            user_id=req["user"], cell_mapping=cell, queued_for_delete=False).create()
        vifs = _refresh(c, req)
    return {"vifs": vifs}


def attach(directory: str, req: dict[str, Any]) -> dict[str, Any]:
    _conf(directory)
    _ctx, _cell, cctx = _cell_context(str(req["instance"]))
    with cctx as c:
        vifs = _refresh(c, req)
    return {"vifs": vifs}


def detach(directory: str, req: dict[str, Any]) -> dict[str, Any]:
    _conf(directory)
    from nova import objects
    from nova.network import neutron

    _ctx, _cell, cctx = _cell_context(str(req["instance"]))
    with cctx as c:
        inst = objects.Instance.get_by_uuid(c, req["instance"],
                                            expected_attrs=["info_cache"])
        nw_info, _allocation = neutron.API().deallocate_port_for_instance(
            c, inst, str(req["port"]))
    return {"vifs": [vif["id"] for vif in nw_info]}


COMMANDS = {"create": create, "attach": attach, "detach": detach}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("setup", *COMMANDS):
        print("usage: nova_metadata.py setup|create|attach|detach DIR", file=sys.stderr)
        return 2
    directory = argv[2]
    if argv[1] == "setup":
        return setup(directory)
    req = json.load(sys.stdin)
    out = COMMANDS[argv[1]](directory, req)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
else:  # imported by uwsgi as its --wsgi-file
    from nova.api.metadata import wsgi as _metadata_wsgi

    application = _metadata_wsgi.init_application()
