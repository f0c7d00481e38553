"""Children of a kernel that have done their part and are exiting, not yet reaped: throwaway
children killed once they answered, a live fork's intermediates.

Their exit (unmapping their copy of the kernel's memory) takes milliseconds that no answer
needs to wait for, so they are reaped later; meanwhile they hold nothing, and a fork of the
kernel may ignore them. This module runs inside kernels: standard library only.
"""

from __future__ import annotations

import os

# Their pids (this process's children).
EXITING: list[int] = []


def reap_exiting(*, wait: bool = False) -> None:
    """Reap those that have exited (with ``wait``: all, waiting for them)."""
    for pid in list(EXITING):
        try:
            done, _ = os.waitpid(pid, 0 if wait else os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            EXITING.remove(pid)


def reap_later(pid: int) -> None:
    """Reap child ``pid``, which is exiting, soon after this request is answered (from the
    kernel's event loop): a zombie still counts against the episode's process limit."""
    import asyncio

    EXITING.append(pid)
    tries = [50]  # a second at most (a child a tracer holds is reaped by a later request)

    def reap() -> None:
        reap_exiting()
        tries[0] -= 1
        if pid in EXITING and tries[0] > 0:
            loop.call_later(0.02, reap)

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop here: the next throwaway or fork reaps it
        return
    loop.call_soon(reap)
