#!/usr/bin/python3 -IS
"""netinject-guest: the boot service's launcher (the agent is ../lib/netinject/).

Installed as /usr/sbin/netinject-guest. A later boot whose answer the agent left ready is
ended here with built-in modules only, without loading the agent: on the first boot the
agent recorded in the state file the path whose presence means the same drive is still
there (udev's /dev/disk/by-uuid link of a vfat drive; run.fast_path decides which), and
if it is there, nothing is new. The launcher decides nothing itself; everything else goes
to the agent. Only the unit's own command lines are looked at ('run', and 'run --root
DIR' as tests give it): the agent parses the rest. The constants below repeat the
contract's (this file must not import the agent); a test checks that they agree.
"""

import time

started = time.monotonic()
cpu_started = time.process_time()

import posix  # noqa: E402  (built in: the clock above starts before any import)
import sys  # noqa: E402

STATE_FILE = "/var/lib/netinject/instance-id"
LOG_FILE = "/var/log/netinject.log"
RESULT_PREFIX = "netinject-result"
RTTIME_MAX_US = 1_000_000  # real-time priority only under a bound at least this tight


def later_boot(root: str) -> bool:
    """True (after logging it) when the path the state file's fourth line names (the
    agent's record of how to recognise this drive) exists under ``root``."""
    try:
        fd = posix.open(root + STATE_FILE, posix.O_RDONLY | posix.O_NONBLOCK | posix.O_NOFOLLOW)
        try:
            state = posix.read(fd, 4096).decode("ascii").split()
        finally:
            posix.close(fd)
        if len(state) != 4 or not state[3].startswith("/dev/"):
            return False
        posix.lstat(root + state[3])
        elapsed = (time.monotonic() - started) * 1000
        text = ("netinject: [%7.1f ms] not the first boot of instance %s (drive %s on %s): "
                "nothing to do\n%s outcome=unchanged elapsed_ms=%.1f instance=%s -- not the "
                "first boot\n"
                % (elapsed, state[0], state[1], state[2], RESULT_PREFIX, elapsed, state[0]))
        fd = posix.open(root + LOG_FILE, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT
                        | posix.O_NOFOLLOW | posix.O_NONBLOCK, 0o644)
        try:
            if posix.fstat(fd).st_mode & 0o170000 == 0o100000:  # a regular file only
                posix.write(fd, text.encode())
        finally:
            posix.close(fd)
        sys.stderr.write(text)
        return True
    except (OSError, UnicodeError):
        return False  # the agent decides, and logs why


def realtime_bounded() -> bool:
    """True when RLIMIT_RTTIME bounds this process (the unit's LimitRTTIME=): then a
    looping bug at real-time priority is stopped by the kernel (SIGXCPU, then SIGKILL)
    after a fraction of a second of CPU without a blocking call, instead of stalling a
    1-vCPU guest's boot. Read from /proc/self/limits (``resource`` is not built in)."""
    try:
        fd = posix.open("/proc/self/limits", posix.O_RDONLY | posix.O_NONBLOCK)
        try:
            text = posix.read(fd, 8192).decode("ascii", "replace")
        finally:
            posix.close(fd)
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("Max realtime timeout"):
            soft = line[len("Max realtime timeout"):].split()[:1]
            return bool(soft) and soft[0].isdigit() and int(soft[0]) <= RTTIME_MAX_US
    return False


def compiled(agent_dir: str) -> bool:
    """True when the agent's byte-compiled module for this interpreter is there. Without
    it, importing the agent compiles it: a second of CPU under emulation, past the unit's
    RLIMIT_RTTIME bound at real-time priority (the kernel's SIGXCPU killed the agent on
    Debian 13, whose Python an installer of another version cannot compile for)."""
    tag = sys.implementation.cache_tag
    if not tag:
        return False
    try:
        posix.stat("%s/__pycache__/netinject_guest.%s.pyc" % (agent_dir, tag))
    except OSError:
        return False
    return True


def ask_realtime(agent_dir: str) -> None:
    """The lowest real-time priority for this boot run, best effort and only when
    bounded and nothing is left to compile. Measured on a 1-vCPU TCG guest (bench agent,
    5 runs each): first boot 82.8 ms median with it, 156.1 ms without: udev's workers
    share the CPU at that moment."""
    if not realtime_bounded() or not compiled(agent_dir):
        return
    try:
        posix.sched_setscheduler(0, posix.SCHED_FIFO | posix.SCHED_RESET_ON_FORK,
                                 posix.sched_param(1))
    except (AttributeError, OSError):
        pass


def launch() -> int:
    args = sys.argv[1:]
    root = args[2].rstrip("/") if args[:2] == ["run", "--root"] and len(args) == 3 else ""
    prefix = sys.argv[0].rpartition("/sbin/")[0]  # /usr, or an image tree's usr
    agent_dir = prefix + "/lib/netinject" if prefix else "/usr/lib/netinject"
    if args == ["run"] or root:
        if later_boot(root):
            return 0
        if not root:
            ask_realtime(agent_dir)
    sys.path.insert(0, agent_dir)
    import netinject_guest  # type: ignore[import-not-found]

    return int(netinject_guest.main(started=started, cpu_started=cpu_started))


if __name__ == "__main__":
    sys.exit(launch())
