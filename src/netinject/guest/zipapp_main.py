"""The bundle's ``__main__`` (netinject-guest.pyz): ``install``/``uninstall --root IMAGE``
go to the installer (netinject_guest_image), everything else to the agent. Shipped as
the zipapp's __main__.py; not part of the joined agent, not imported by netinject."""

import time

started = time.monotonic()
cpu_started = time.process_time()

import sys  # noqa: E402  (the clocks above start before any import)

if sys.argv[1:2] in (["install"], ["uninstall"]):
    import netinject_guest_image  # type: ignore[import-not-found]

    sys.exit(netinject_guest_image.main(
        sys.argv[1:], __loader__.get_data("netinject_guest.py"),  # type: ignore[name-defined]
        __loader__.get_data("launcher.py")))  # type: ignore[name-defined]
import netinject_guest  # type: ignore[import-not-found]  # noqa: E402

sys.exit(netinject_guest.main(started=started, cpu_started=cpu_started))
