"""The open-file limit of a process that drives kernels (a pool's, a server's, a guard host's).

Standard library only: the guard host imports it, and starts with each pool.
"""

from __future__ import annotations

import contextlib
import resource

# Descriptors enough for some thousands of kernels, where the system allows that many.
_OPEN_FILES_WANTED = 1 << 17
# What a session holds in the process that drives its kernel (measured: 5 sockets, 8 event
# fds, a pidfd; its frame guard's are the guard host's), and a client's connection.
DESCRIPTORS_PER_KERNEL = 16


def kernels_within_open_file_limit() -> int | None:
    """How many kernels this process's open-file limit leaves room for (None: unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(0, (soft - 256) // DESCRIPTORS_PER_KERNEL)  # 256: the server's own


def raise_open_file_limit() -> None:
    """Lift this process's soft limit on open files to its hard limit (as servers do).

    Each kernel holds about fifteen descriptors in the process that drives it (its ZMQ
    sockets and their event fds, a pidfd), so the common soft limit of 1024 would fail kernel
    starts past about sixty kernels. A pool calls this
    when it starts; a server's ``max_sessions`` and ``max_connections`` still bound them.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < _OPEN_FILES_WANTED:
        # A privileged process may lift the hard limit too (a root server: at sixteen
        # descriptors a session, a hard limit of 20000 fails its 1200th).
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (_OPEN_FILES_WANTED, _OPEN_FILES_WANTED))
            return
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
