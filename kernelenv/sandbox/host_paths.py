"""Host-side file work in folders an agent can write, done so that it cannot be redirected.

A sandboxed kernel writes its own folders (its working directory, its byte budget, its socket
directory), and the host sometimes has to make things there too (a live fork's directory). A
path the host resolves component by component can be swapped for a symbolic link in between,
and the host, as root, would then follow it anywhere. So the host opens the folder it trusts
once and works below it through descriptors, ``openat``-style: every component opened with
``O_NOFOLLOW``, every file created with ``O_EXCL``. A swap makes the operation fail; it never
lands elsewhere. Copies of an episode's files are not made here at all: the kernel makes them
inside its own sandbox (see :func:`kernelenv.runtime.livefork.fork_here`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_subdir(parent_fd: int, name: str, *, create: bool = False, mode: int = 0o700) -> int:
    """A descriptor of the folder ``name`` in ``parent_fd``, never through a symbolic link.

    Raises:
        OSError: ``name`` is a symbolic link or not a folder (ELOOP, ENOTDIR), or missing.
    """
    if os.sep in name or name in ("", ".", ".."):
        raise ValueError(f"not a single path component: {name!r}")
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode, dir_fd=parent_fd)
    return os.open(name, _DIRECTORY, dir_fd=parent_fd)


def open_trusted_dir(path: str | os.PathLike[str]) -> int:
    """A descriptor of a folder whose path only the host controls (its last component included)."""
    return os.open(path, _DIRECTORY)


def make_new_dir(parent_fd: int, name: str, mode: int = 0o700) -> int:
    """Create the folder ``name`` in ``parent_fd`` (it must not exist) and open it."""
    os.mkdir(name, mode, dir_fd=parent_fd)
    return open_subdir(parent_fd, name)


def write_new_file(dir_fd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """Create the file ``name`` in ``dir_fd`` with ``data``; fails if anything is there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def fd_path(dir_fd: int, name: str = "") -> str:
    """A path that names ``name`` in the folder of ``dir_fd`` itself, wherever it has moved.

    For calls that take only a path (``bind`` of a Unix socket). ``/proc/self/fd/N`` is resolved
    by the kernel to the open folder; only ``name`` is looked up in it, and ``bind`` never follows
    a link there (it fails if anything has that name).
    """
    return str(Path(f"/proc/self/fd/{dir_fd}") / name) if name else f"/proc/self/fd/{dir_fd}"


class OwnedFolder:
    """A folder made in ``parent_fd`` and removed the same way, through a descriptor of its
    parent (kept open until then), never by a path that a swapped link could redirect."""

    def __init__(self, parent_fd: int, name: str) -> None:
        self.name = name
        self._parent_fd: int | None = os.dup(parent_fd)

    def remove(self) -> None:
        """Remove the folder and all in it (links are removed, not followed). Safe to call twice."""
        fd, self._parent_fd = self._parent_fd, None
        if fd is None:
            return
        try:
            shutil.rmtree(self.name, dir_fd=fd, ignore_errors=True)
        finally:
            os.close(fd)
