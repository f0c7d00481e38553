"""A pids cgroup per kernel: caps its process count and finds every process it started.

``RLIMIT_NPROC`` is not enforced for root and counts a user's processes machine-wide, so the
process limit is a pids cgroup (cgroup v1 ``pids`` hierarchy, or a delegated cgroup v2 subtree).
Membership is inherited by every descendant, even one that calls ``setsid`` or double-forks,
so killing the cgroup's members takes down everything an episode started.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_PREFIX = "kernelenv-"
V1_ROOT = Path("/sys/fs/cgroup/pids")
V2_ROOT = Path("/sys/fs/cgroup")


@functools.cache
def cgroup_parent() -> Path | None:
    """The directory new pids cgroups can be created in, or None (checked once per process)."""
    for parent in _candidates():
        trial = parent / f"{CGROUP_PREFIX}{os.getpid()}-probe"
        try:
            trial.mkdir(exist_ok=True)
            try:
                if (trial / "pids.max").exists() and os.access(trial / "cgroup.procs", os.W_OK):
                    return parent
            finally:
                trial.rmdir()
        except OSError:
            continue
    return None


def _candidates() -> list[Path]:
    candidates = []
    if (V1_ROOT / "cgroup.procs").exists():
        candidates.append(V1_ROOT)
    # cgroup v2: only our own cgroup can be delegated to us, and only with pids enabled.
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = V2_ROOT / line[3:].lstrip("/")
                if "pids" in (own / "cgroup.subtree_control").read_text().split():
                    candidates.append(own)
    return candidates


class PidsCgroup:
    """One kernel's pids cgroup: created before launch, emptied and removed after.

    Args:
        name: Unique name; prefixed with ``kernelenv-<owner pid>-`` so stale ones can be reaped.
        max_processes: The most processes (threads count too) the group may hold at once.
    """

    def __init__(self, name: str, max_processes: int) -> None:
        parent = cgroup_parent()
        if parent is None:
            raise OSError("no writable pids cgroup on this machine")
        self.path = parent / f"{CGROUP_PREFIX}{os.getpid()}-{name}"
        self.path.mkdir(exist_ok=True)
        (self.path / "pids.max").write_text(str(max_processes))

    @property
    def procs_file(self) -> Path:
        """Writing a pid here moves that process into the group."""
        return self.path / "cgroup.procs"

    def pids(self) -> list[int]:
        """The processes in the group right now."""
        try:
            return [int(p) for p in self.procs_file.read_text().split()]
        except OSError:
            return []

    def kill_all(self, rounds: int = 50) -> None:
        """SIGKILL every member (repeat while new ones appear: a fork can race the read)."""
        for round_ in range(rounds):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if round_ + 1 < rounds:
                time.sleep(0.01)

    def remove(self, timeout_s: float = 5.0) -> bool:
        """Kill what is left and remove the group; False if it could not be removed."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.kill_all()
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError:  # members still exiting (zombies not yet reaped by their parent)
                if time.monotonic() > deadline:
                    log.warning("could not remove pids cgroup %s", self.path)
                    return False
                time.sleep(0.02)


def reap_stale_cgroups() -> list[Path]:
    """Kill the members of, and remove, pids cgroups whose owning process has died."""
    parent = cgroup_parent()
    removed: list[Path] = []
    if parent is None:
        return removed
    for path in parent.glob(CGROUP_PREFIX + "*"):
        try:
            owner = int(path.name[len(CGROUP_PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if owner == os.getpid() or pid_alive(owner):
            continue
        group = PidsCgroup.__new__(PidsCgroup)
        group.path = path
        if group.remove(timeout_s=1.0):
            removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (possibly as another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
