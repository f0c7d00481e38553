"""The cgroups of one episode: a process cap (pids) and a memory limit, and every process it started.

``RLIMIT_NPROC`` is not enforced for root and counts a user's processes machine-wide, so the
process limit is a pids cgroup (cgroup v1 ``pids`` hierarchy, or a delegated cgroup v2 subtree).
``RLIMIT_AS`` bounds one process's address space, not an episode's memory, so the memory limit is
a memory cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) made below the server's own
memory cgroup, so kernels stay inside the server's limits. tmpfs pages (the episode's files in
/tmp, /dev/shm and its working directory) are charged to it too.
Membership is inherited by every descendant, even one that calls ``setsid`` or double-forks,
so killing the cgroups' members takes down everything an episode started.

The cgroups are made from a name and joined by pid (:meth:`EpisodeCgroup.add`, or the
:data:`JOIN_CGROUPS` shell prefix before exec): nothing assumes how the kernel was launched.
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
V1_MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")

# Joins every cgroup procs file named before "--", then becomes the real command: the groups
# are entered before anything can fork, so every descendant is counted and can be found.
JOIN_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


@functools.cache
def cgroup_parent() -> Path | None:
    """The directory new pids cgroups can be created in, or None (checked once per process)."""
    for parent in _candidates():
        if _can_make_child(parent, "pids.max"):
            return parent
    return None


@functools.cache
def memory_cgroup_parent() -> Path | None:
    """The directory new memory cgroups can be created in, or None (checked once per process).

    Our own memory cgroup (v1 ``memory`` hierarchy, or v2 with ``memory`` in its
    ``cgroup.subtree_control``), never a hierarchy's root: a kernel must not leave the limits
    the server itself runs under.
    """
    for parent in _own_cgroups("memory"):
        if _can_make_child(parent, "memory.max") or _can_make_child(
            parent, "memory.limit_in_bytes"
        ):
            return parent
    return None


def _can_make_child(parent: Path, control: str) -> bool:
    trial = parent / f"{CGROUP_PREFIX}{os.getpid()}-probe"
    try:
        trial.mkdir(exist_ok=True)
        try:
            return (trial / control).exists() and os.access(trial / "cgroup.procs", os.W_OK)
        finally:
            trial.rmdir()
    except OSError:
        return False


def _candidates() -> list[Path]:
    candidates = []
    if (V1_ROOT / "cgroup.procs").exists():
        candidates.append(V1_ROOT)
    return candidates + _own_cgroups("pids", v1=False)


def _own_cgroups(controller: str, *, v1: bool = True) -> list[Path]:
    """Our own cgroup in each hierarchy that offers ``controller`` (v1 first, then v2)."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            if hierarchy == "0" and controllers == "":
                # cgroup v2: only our own cgroup can be delegated to us, with the controller on.
                own = V2_ROOT / path.lstrip("/")
                with contextlib.suppress(OSError):
                    if controller in (own / "cgroup.subtree_control").read_text().split():
                        found.append(own)
            elif v1 and controller in controllers.split(","):
                own = V2_ROOT / controller / path.lstrip("/")
                if own.is_dir():
                    found.insert(0, own)
    return found


class EpisodeCgroup:
    """One episode's cgroups: created before launch, emptied and removed after.

    On cgroup v1 each controller has its own directory (pids under the pids hierarchy, memory
    under the server's memory cgroup); on v2 with both delegated, they may be one directory.

    Args:
        name: Unique name; prefixed with ``kernelenv-<owner pid>-`` so stale ones can be reaped.
        max_processes: The most processes (threads count too) the episode may hold at once,
            or None. Needs ``pids_parent``.
        memory_bytes: The episode's memory limit (no swap beyond it), or None. Needs
            ``memory_parent``.
        pids_parent: Where to make the pids cgroup (:func:`cgroup_parent`).
        memory_parent: Where to make the memory cgroup (:func:`memory_cgroup_parent`).

    Raises:
        OSError: a cgroup could not be made (what was made is removed again).
    """

    def __init__(
        self,
        name: str,
        *,
        max_processes: int | None = None,
        memory_bytes: int | None = None,
        pids_parent: Path | None = None,
        memory_parent: Path | None = None,
    ) -> None:
        dirname = f"{CGROUP_PREFIX}{os.getpid()}-{name}"
        self.pids_path = pids_parent / dirname if max_processes and pids_parent else None
        self.memory_path = memory_parent / dirname if memory_bytes and memory_parent else None
        self.memory_bytes = memory_bytes if self.memory_path is not None else None
        self.paths = list(dict.fromkeys(p for p in (self.pids_path, self.memory_path) if p))
        try:
            for path in self.paths:
                path.mkdir(exist_ok=True)
            if self.pids_path is not None:
                (self.pids_path / "pids.max").write_text(str(max_processes))
            if self.memory_path is not None:
                _limit_memory(self.memory_path, memory_bytes or 0)
        except BaseException:
            self.remove(timeout_s=1.0)
            raise

    @property
    def path(self) -> Path:
        """The first of the episode's cgroup directories (the pids one when there is one)."""
        return self.paths[0]

    @property
    def procs_files(self) -> list[Path]:
        """Writing a pid into each of these moves that process into the episode's cgroups."""
        return [path / "cgroup.procs" for path in self.paths]

    @property
    def procs_file(self) -> Path:
        """The first procs file (kept for callers that know one hierarchy)."""
        return self.procs_files[0]

    def add(self, pid: int) -> None:
        """Move process ``pid`` (and, from then on, its children) into the episode's cgroups."""
        for procs in self.procs_files:
            procs.write_text(str(pid))

    def pids(self) -> list[int]:
        """The processes in the episode's cgroups right now."""
        found: dict[int, None] = {}
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(dict.fromkeys(int(p) for p in procs.read_text().split()))
        return list(found)

    def oom_kills(self) -> int:
        """How many processes the memory limit has killed so far (0 without a memory cgroup)."""
        if self.memory_path is None:
            return 0
        for name in ("memory.events", "memory.oom_control"):  # v2, v1
            with contextlib.suppress(OSError):
                for line in (self.memory_path / name).read_text().splitlines():
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
        return 0

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
        """Kill what is left and remove the cgroups; False if one could not be removed."""
        deadline = time.monotonic() + timeout_s
        left = list(self.paths)
        while True:
            self.kill_all()
            for path in list(left):
                try:
                    path.rmdir()
                    left.remove(path)
                except FileNotFoundError:
                    left.remove(path)
                except OSError:  # members still exiting (zombies not yet reaped by their parent)
                    pass
            if not left:
                return True
            if time.monotonic() > deadline:
                log.warning("could not remove cgroups %s", left)
                return False
            time.sleep(0.02)


def _limit_memory(path: Path, limit: int) -> None:
    if (path / "memory.max").exists():  # v2
        (path / "memory.max").write_text(str(limit))
        with contextlib.suppress(OSError):  # absent without swap accounting
            (path / "memory.swap.max").write_text("0")
        with contextlib.suppress(OSError):  # one OOM kill ends the whole episode
            (path / "memory.oom.group").write_text("1")
        return
    (path / "memory.limit_in_bytes").write_text(str(limit))
    with contextlib.suppress(OSError):  # only with swap accounting (swapaccount=1)
        (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
    with contextlib.suppress(OSError):
        (path / "memory.swappiness").write_text("0")


def reap_stale_cgroups() -> list[Path]:
    """Kill the members of, and remove, episode cgroups whose owning process has died."""
    removed: list[Path] = []
    parents = dict.fromkeys(p for p in (cgroup_parent(), memory_cgroup_parent()) if p)
    for parent in parents:
        for path in parent.glob(CGROUP_PREFIX + "*"):
            try:
                owner = int(path.name[len(CGROUP_PREFIX) :].split("-", 1)[0])
            except ValueError:
                continue
            if owner == os.getpid() or pid_alive(owner) or not path.is_dir():
                continue
            group = EpisodeCgroup.__new__(EpisodeCgroup)
            group.paths = [path]
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
