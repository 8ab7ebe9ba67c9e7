"""The vLLM server's guard: the leader of the server's process group, which takes the whole group down when the
process that started it dies outright.

``python -m logivote.serving.guard ARGV...`` runs ARGV (the ``vllm serve`` command) as its child and waits for it.
It is started by :class:`~logivote.serving.server.VllmServer` in a session of its own, with
``PR_SET_PDEATHSIG`` set to SIGUSR1: when the rule's process is killed by SIGKILL (``kill -9``, the OOM killer, a
killed Snakemake tree) the guard is told and stops every process of its group, vLLM's engine processes included —
SIGTERM, then SIGKILL after :data:`GRACE_S`. A death signal given to vLLM itself would not do: it may come before
vLLM has set its handlers (then vLLM dies and its engine processes live on, as the fault-injection bench saw).

Otherwise the guard is transparent: SIGTERM from :meth:`~logivote.serving.server.VllmServer.stop` reaches vLLM
through the group, and the guard ends the way its child ended (its exit status, or the same signal), so the
server's errors read as before. It imports nothing heavy: it starts in tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

GRACE_S = 20.0
PARENT_VAR = "LOGIVOTE_GUARD_PARENT"  # the pid of the process that started the guard (its death is checked once)


def set_parent_death_signal(sig: int) -> None:
    """``prctl(PR_SET_PDEATHSIG, sig)``: ``sig`` reaches this process when the thread that started it exits."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)


def stop_group(*_: object) -> None:
    """Stop every process of this group but this one (SIGTERM, then SIGKILL after :data:`GRACE_S`), then exit."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and _others_in_group():
        time.sleep(0.2)
    os.killpg(0, signal.SIGKILL)  # this process included: the one waiting for it is gone


def _others_in_group() -> bool:
    me, group = os.getpid(), os.getpgrp()
    return any(pgrp == group and pid != me for pid, (_, pgrp) in processes().items())


def processes() -> dict[int, tuple[int, int]]:
    """Every live process (zombies left out): its pid -> (parent pid, process group), from ``/proc/<pid>/stat``."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()  # the command name in (...) may hold spaces
        except OSError:
            continue
        if fields[0] != "Z":
            found[int(name)] = (int(fields[1]), int(fields[2]))
    return found


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGUSR1, stop_group)
    set_parent_death_signal(signal.SIGUSR1)
    if os.environ.get(PARENT_VAR) and os.getppid() != int(os.environ[PARENT_VAR]):
        stop_group()  # the parent died before the death signal was set
    # SIGTERM from VllmServer.stop() reaches the whole group: vLLM stops, then the guard ends with it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    env = {k: v for k, v in os.environ.items() if k != PARENT_VAR}
    child = subprocess.Popen(argv, env=env, preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    while True:
        with contextlib.suppress(InterruptedError):
            code = child.wait()
            break
    if code < 0:  # end as the child did: killed by the same signal (SIGKILL and SIGSTOP have no handler to reset)
        with contextlib.suppress(OSError, ValueError):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
