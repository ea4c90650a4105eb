"""The agent's log: timestamped lines to the console and /var/log/netinject.log."""

import os
import stat
import sys
import time

from .contract import LOG_FILE, AgentError
from .paths import dirname, join, makedirs, no_symlink_parents


class Log:
    """Timestamped lines to the console (stderr) and /var/log/netinject.log.

    Lines are collected and written once, when the run ends: each write to the console
    (journald, then the serial console) costs ~4 ms under emulation, more than the
    later-boot check itself. The run is short and always ends in flush().
    """

    def __init__(self, root: str, quiet: bool = False, t0: "float | None" = None,
                 cpu0: "float | None" = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self.cpu0 = time.process_time() if cpu0 is None else cpu0
        self.root = root
        self.quiet = quiet
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        self.lines.append("netinject: [%7.1f ms] %s"
                          % ((time.monotonic() - self.t0) * 1000, msg))

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.t0) * 1000

    def cpu_ms(self) -> float:
        """CPU time this process spent since t0 (the rest of the elapsed time went to
        waiting: I/O, and other tasks on the CPU)."""
        return (time.process_time() - self.cpu0) * 1000

    def flush(self) -> None:
        text = "\n".join(self.lines) + "\n"
        if not self.quiet and self.lines:
            try:
                sys.stderr.write(text)
                sys.stderr.flush()
            except OSError:
                pass
        path = join(self.root, LOG_FILE)
        flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                 | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            no_symlink_parents(self.root, LOG_FILE)
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:  # no log directory yet (an image tree)
                makedirs(dirname(path))
                fd = os.open(path, flags, 0o644)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.write(fd, text.encode("utf-8", "replace"))
            finally:
                os.close(fd)
        except (OSError, AgentError):
            pass  # a read-only, full or tampered /var must not break boot
