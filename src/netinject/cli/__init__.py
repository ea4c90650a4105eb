"""The command line: the one place where errors become messages and exit codes.

Each command is a module in ``cli/commands/`` (shaped like netplan's CLI); this module
builds the parser from them and turns every NetinjectError into a message and a status.

Exit status: 0 success, 1 operational failure (a tool or device failed, a write failed:
then every output is as it was), 2 bad input or usage (every problem printed on stderr,
nothing written).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .. import __version__
from ..errors import InvalidInput, NetinjectError, UsageError
from ..hostio import OutputError
from .commands import COMMANDS

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netinject",
        description="Render a cloud VM's network configuration from Neutron data and inject "
                    "it before the guest's network service starts, so no VM waits on DHCP.",
        epilog="Exit status: 0 ok, 1 failure, 2 bad input (every error listed, nothing "
               "written). Run 'netinject COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"netinject {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, systemd, kill) unwinds like Ctrl-C, so QEMU, dnsmasq and the
    # network namespaces of a running boot are cleaned up rather than left behind.
    previous = (signal.signal(signal.SIGTERM, _terminate)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        return int(args.func(args))
    except InvalidInput as exc:
        where = f"{exc.source}: " if exc.source else ""
        print(f"netinject: {where}invalid input ({len(exc.errors)} error(s)):",
              file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, OutputError) as exc:
        print(f"netinject: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NetinjectError as exc:
        print(f"netinject: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except FileNotFoundError as exc:
        print(f"netinject: error: {exc.filename}: no such file", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        # Anything the host refused that no layer above named (a socket, a device): a
        # message, never a traceback. Writes name their file themselves (WriteError).
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"netinject: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("netinject: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
