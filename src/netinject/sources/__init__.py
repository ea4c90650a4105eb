"""Raw inputs -> validated model.

* :mod:`.neutron`: an *instance document* holding Neutron API objects (ports, subnets,
  networks) plus the instance, its image properties and system metadata.
* :mod:`.network_data`: nova's OpenStack ``network_data.json`` (+ ``meta_data.json``).
"""
