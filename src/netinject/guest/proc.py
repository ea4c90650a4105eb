"""Running another program from the agent, bounded in time: fork and exec (no
``subprocess``: it imports selectors, signal and more on the boot path), the child in a
process group of its own, killed with whatever it started when it overruns."""

import os

from .errors import AgentError

SIGKILL = 9  # (on every Linux architecture; the signal module costs an import)


def run_bounded(argv: "list[str]", limit: float, what: str) -> None:
    """Run ``argv`` (argv[0] an absolute path) to its end within ``limit`` seconds;
    AgentError (naming ``what``) when it fails, cannot start, or overruns (then it and its
    process group are killed first). Its output goes where the agent's goes."""
    pid = os.fork()
    if pid == 0:  # the child: exec, never return into the agent
        try:
            os.setpgid(0, 0)  # its own group: what it starts goes with it on a timeout
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    try:
        os.setpgid(pid, pid)  # (also here: whichever runs first)
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
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) \
                if hasattr(os, "waitstatus_to_exitcode") else status >> 8
        if time.monotonic() >= deadline:
            break
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, SIGKILL)
        except OSError:
            pass
    os.waitpid(pid, 0)
    return None


TOOL_DIRS = ("usr/sbin", "sbin", "usr/bin", "bin")


def tool(name: str, root: str = "/") -> "str | None":
    """The absolute path of a program in the guest (its usual directories; qemu-ga may
    give guest-exec no PATH), None when it is not installed."""
    for d in TOOL_DIRS:
        path = "%s/%s/%s" % (root.rstrip("/"), d, name)
        if os.access(path, os.X_OK):
            return path
    return None


def run_command(argv: "list[str]", limit: float, what: str) -> str:
    """Run ``argv`` to its end within ``limit`` seconds and return its output (stdout
    and stderr together); AgentError naming ``what`` (with the output's tail) when it
    fails or overruns (then its whole process group is killed). For live changes in a
    running guest, off the boot path: subprocess is fine there."""
    import subprocess

    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise AgentError("%s could not be started: %s" % (what, exc)) from None
    try:
        out = proc.communicate(timeout=limit)[0]
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, SIGKILL)
        except OSError:
            pass
        proc.communicate()
        raise AgentError("%s did not finish within %.0f s: killed it" % (what, limit)
                         ) from None
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        tail = " ".join(text.split())[-300:]
        raise AgentError("%s failed (exit %d)%s" % (what, proc.returncode,
                                                    ": " + tail if tail else ""))
    return text
