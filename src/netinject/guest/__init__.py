"""The guest half: the agent, which runs inside the VM (standard library only, Python >=
3.9), joined into one module by ``netinject guest-bundle`` (see guest_bundle.py); the
installer (image.py), the launcher and the bundle's __main__ ship beside it."""
