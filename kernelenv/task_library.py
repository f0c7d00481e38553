"""The task library: find task notebooks (packaged or in a source checkout), list and load them."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from .errors import UnknownTaskError
from .task_format import Task, load_task

# The wheel carries the repository's tasks/ folder here (pyproject: force-include).
PACKAGED_TASKS = Path(__file__).parent / "_tasks"
SOURCE_TASKS = Path(__file__).parent.parent / "tasks"


def shipped_task_dirs() -> list[Path]:
    """Every folder the shipped task notebooks (with their solutions) may be read from."""
    return [PACKAGED_TASKS, SOURCE_TASKS]


def default_tasks_dir() -> Path:
    """The library shipped with kernelenv: the installed copy, else the source checkout's."""
    if PACKAGED_TASKS.is_dir():
        return PACKAGED_TASKS
    return SOURCE_TASKS


class TaskLibrary:
    """The task notebooks of one folder, read on first use.

    Example:
        >>> library = TaskLibrary()
        >>> library.get("task_easy_1").family
        <Family.PR_REVIEW: 'pr_review'>

    Args:
        directory: Folder of ``<task id>.ipynb`` files (default: the shipped library).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_tasks_dir()
        self._tasks: dict[str, Task] | None = None

    def paths(self) -> list[Path]:
        """The task notebooks of the folder, sorted by name."""
        return sorted(p for p in self.directory.glob("*.ipynb") if not p.name.startswith("."))

    @property
    def tasks(self) -> dict[str, Task]:
        """Every task by id (read and validated once).

        Raises:
            TaskFormatError: a notebook in the folder is not a valid task.
        """
        if self._tasks is None:
            self._tasks = {task.id: task for task in map(load_task, self.paths())}
        return self._tasks

    def ids(self) -> list[str]:
        """Task ids, sorted."""
        return sorted(self.tasks)

    def get(self, task_id: str) -> Task:
        """The task with this id.

        Raises:
            UnknownTaskError: no such task (the message suggests close names).
        """
        try:
            return self.tasks[task_id]
        except KeyError:
            raise UnknownTaskError(task_id, self.tasks) from None

    def __len__(self) -> int:
        return len(self.tasks)


@lru_cache(maxsize=1)
def default_library() -> TaskLibrary:
    """The shared :class:`TaskLibrary` of the shipped tasks."""
    return TaskLibrary()
