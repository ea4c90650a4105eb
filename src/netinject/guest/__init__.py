"""The guest half: ``agent.py`` runs inside the VM (standard library only, Python >= 3.9)
and is shipped as one file by ``netinject guest-bundle``."""
