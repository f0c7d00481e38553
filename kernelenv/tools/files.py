"""File tools for agent code (EnvTorch's ``file_write``, ``file_read``) on an episode's host folder.

Paths are read inside the episode's own directory, as if it were the root: ``/tmp/hello.txt``
is ``<episode files>/tmp/hello.txt`` on the host, never the host's real ``/tmp``. The directory
is created for each episode and removed with it, and the kernel itself cannot see it when it
runs in a sandbox, so files written here are what the agent hands to the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from .registry import Tool, ToolContext, ToolRegistry

# Largest file one call may write (the episode directory lives on the host's disk).
MAX_FILE_BYTES = 16 * 1024 * 1024


def episode_path(context: ToolContext, path: str) -> Path:
    """The host path of ``path`` inside the episode's directory.

    Raises:
        PermissionError: the path would leave the episode's directory.
    """
    parts = PurePosixPath(path).parts
    if ".." in parts:
        raise PermissionError(f"{path!r}: '..' is not allowed in tool file paths")
    relative = [part for part in parts if part != "/"]
    root = context.files_dir.resolve()
    target = root.joinpath(*relative)
    if not target.resolve().is_relative_to(root):  # a symbolic link pointing outside
        raise PermissionError(f"{path!r} leads outside the episode's files")
    return target


def file_write(path: str, content: str, context: ToolContext) -> int:
    """Write text to a file in the episode's files (created with its folders); returns its length."""
    data = content.encode()
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"content is {len(data)} bytes; files are limited to {MAX_FILE_BYTES}")
    with _agent_paths(path):
        target = episode_path(context, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return len(content)


def file_read(path: str, context: ToolContext) -> str:
    """Read a text file from the episode's files."""
    with _agent_paths(path):
        return episode_path(context, path).read_text()


def file_list(path: str = "/", *, context: ToolContext) -> list[str]:
    """List a folder of the episode's files (folder names end with '/')."""
    with _agent_paths(path):
        folder = episode_path(context, path)
        return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())


@contextmanager
def _agent_paths(path: str) -> Iterator[None]:
    """Re-raise OS errors naming the agent's path, not the host's (which it must not learn)."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, path) from None


FILE_TOOLS = (file_write, file_read, file_list)


def add_file_tools(registry: ToolRegistry) -> ToolRegistry:
    """Register ``file_write``, ``file_read`` and ``file_list`` in ``registry``; returns it."""
    for fn in FILE_TOOLS:
        registry.add(Tool.from_function(fn))
    return registry
