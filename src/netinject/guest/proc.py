"""Running another program from the agent, bounded in time: fork and exec (no
``subprocess``: it imports selectors, signal and more on the boot path), the child in a
process group of its own, killed with whatever it started when it overruns."""

import posix

from .errors import AgentError

SIGKILL = 9  # (on every Linux architecture; the signal module costs an import)


def run_bounded(argv: "list[str]", limit: float, what: str) -> None:
    """Run ``argv`` (argv[0] an absolute path) to its end within ``limit`` seconds;
    AgentError (naming ``what``) when it fails, cannot start, or overruns (then it and its
    process group are killed first). Its output goes where the agent's goes."""
    pid = posix.fork()
    if pid == 0:  # the child: exec, never return into the agent
        try:
            posix.setpgid(0, 0)  # its own group: what it starts goes with it on a timeout
            posix.execv(argv[0], argv)
        finally:
            posix._exit(127)
    try:
        posix.setpgid(pid, pid)  # (also here: whichever runs first)
    except OSError:
        pass
    code = wait_bounded(pid, limit)
    if code is None:
        raise AgentError("%s did not finish within %.1f s: killed it" % (what, limit))
    if code == 127:
        raise AgentError("%s could not be started (%s)" % (what, argv[0]))
    if code != 0:
        raise AgentError("%s failed (exit %d)" % (what, code))


def wait_bounded(pid: int, limit: float) -> "int | None":
    """The exit code of child ``pid`` (its process group leader), or None when it has not
    ended within ``limit`` seconds: then its group is killed and it is reaped. Polls
    (1 ms, doubling to 10 ms: at most that late) rather than blocking in waitpid, which
    nothing could interrupt."""
    import time

    deadline = time.monotonic() + limit
    pause = 0.001
    while True:
        done, status = posix.waitpid(pid, posix.WNOHANG)
        if done:
            return posix.waitstatus_to_exitcode(status) \
                if hasattr(posix, "waitstatus_to_exitcode") else status >> 8
        if time.monotonic() >= deadline:
            break
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
    for kill, target in ((posix.killpg, pid), (posix.kill, pid)):
        try:
            kill(target, SIGKILL)
        except OSError:
            pass
    posix.waitpid(pid, 0)
    return None
