"""The process-count fallback where no pids cgroup can be made: poll a kernel's tree, kill past a cap.

Weaker than a cgroup: a fast fork bomb can overshoot between two polls, and a process that
double-forks out of the tree (possible without a PID namespace) is no longer counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import defaultdict
from pathlib import Path

log = logging.getLogger(__name__)

POLL_S = 0.2


def descendants(root_pid: int) -> set[int]:
    """``root_pid`` and every process below it, from one scan of /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: parse after the last ")".
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry.name))
    found, todo = {root_pid}, [root_pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_tree(root_pid: int) -> None:
    """Stop the whole tree first (a stopped process cannot fork any more), then kill it."""
    stopped: set[int] = set()
    for _ in range(20):
        new = descendants(root_pid) - stopped
        if not new:
            break
        for pid in new:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        stopped |= new
    for pid in stopped:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class ProcessWatchdog:
    """Kills a kernel's whole process tree once it holds more than ``max_processes``.

    Args:
        root_pid: The launched kernel process (or its wrapper).
        max_processes: The most processes the tree may hold.
    """

    def __init__(self, root_pid: int, max_processes: int) -> None:
        self.root_pid = root_pid
        self.max_processes = max_processes
        self.tripped = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin polling in the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kernelenv-watchdog")

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            tree = await asyncio.to_thread(descendants, self.root_pid)
            if len(tree) > self.max_processes:
                self.tripped = True
                log.warning(
                    "kernel process %d started %d processes (cap %d): killing its tree",
                    self.root_pid, len(tree), self.max_processes,
                )  # fmt: skip
                await asyncio.to_thread(kill_tree, self.root_pid)
                return
            if not os.path.exists(f"/proc/{self.root_pid}"):
                return
            await asyncio.sleep(POLL_S)
