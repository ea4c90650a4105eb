"""netinject in a stock OpenStack cloud: the DynamicJSON vendordata service nova calls
while it builds the config drive, and live reads of Neutron and Glance (openstacksdk).

nova (Newton and later) POSTs ``{instance-id, image-id, hostname, ...}`` to each
``[api] vendordata_dynamic_targets`` entry and puts the JSON reply under the target's
name in ``openstack/<version>/vendor_data2.json``, on the config drive and in the
metadata service; the guest agent reads the key ``netinject`` there. See docs/operator-guide.md's
operator guide.
"""
