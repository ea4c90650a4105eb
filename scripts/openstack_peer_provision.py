"""Provision the local OpenStack peer's Keystone (run by scripts/openstack-peer.sh, in its
chroot, with Debian's python3-openstacksdk): the service project, the users of Neutron,
Glance, nova and netinject, the network and image endpoints, and clouds.yaml.

Usage: provision.py AUTH_URL PASSWORD NEUTRON_PORT GLANCE_PORT
"""

import os
import sys

import openstack

auth_url, password, neutron_port, glance_port = sys.argv[1:5]
conn = openstack.connect(
    auth_url=auth_url, username="admin", password=password, project_name="admin",
    user_domain_name="Default", project_domain_name="Default", region_name="RegionOne",
    identity_interface="public")
idp = conn.identity

service_project = idp.create_project(name="service", domain_id="default",
                                     description="service users")
roles = {r.name: r for r in idp.roles()}
if "service" not in roles:
    roles["service"] = idp.create_role(name="service")

# neutron and glance validate tokens (admin); nova's service user calls the vendordata
# service with its token (service role), as devstack sets it up; netinject reads every
# project's ports and images and tags ports (admin: see docs/operator-guide.md).
for name, role_names in (("neutron", ["admin", "service"]), ("glance", ["admin", "service"]),
                         ("nova", ["admin", "service"]), ("netinject", ["admin", "service"])):
    user = idp.create_user(name=name, password=password, domain_id="default",
                           default_project_id=service_project.id)
    for role in role_names:
        idp.assign_project_role_to_user(service_project, user, roles[role])

for name, kind, port in (("neutron", "network", neutron_port), ("glance", "image", glance_port)):
    service = idp.create_service(name=name, type=kind)
    for interface in ("public", "internal", "admin"):
        idp.create_endpoint(service_id=service.id, interface=interface,
                            url=f"http://127.0.0.1:{port}", region_id="RegionOne")

# A demo project and user: instances and their ports belong to a tenant, not to admin.
demo = idp.create_project(name="demo", domain_id="default")
demo_user = idp.create_user(name="demo", password=password, domain_id="default",
                            default_project_id=demo.id)
idp.assign_project_role_to_user(demo, demo_user, roles["member"])


def cloud(user: str, project: str) -> str:
    return """  {}:
    auth:
      auth_url: {}
      username: {}
      password: {}
      project_name: {}
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
""".format("netinject-admin" if user == "admin" else user, auth_url, user, password, project)


text = "clouds:\n" + "".join(cloud(u, p) for u, p in (
    ("admin", "admin"), ("netinject", "service"), ("nova", "service"), ("demo", "demo")))
fd = os.open("/srv/peer/clouds.yaml", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as out:
    out.write(text)
print("provisioned")
