"""The task library: find task notebooks (packaged or in a source checkout), list and load them."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field

from ..errors import TaskFormatError, UnknownTaskError
from .format import Task, TaskLimits, load_task

# The wheel carries the repository's tasks/ folder here (pyproject: force-include).
PACKAGED_TASKS = Path(__file__).resolve().parents[1] / "_tasks"
SOURCE_TASKS = Path(__file__).resolve().parents[2] / "tasks"


def shipped_task_dirs() -> list[Path]:
    """Every folder the shipped task notebooks (with their solutions) may be read from.

    Besides the package's own ``_tasks`` and the checkout's ``tasks/``, every ``kernelenv/_tasks``
    on ``sys.path``: an editable install puts a copy in site-packages, beside the package
    ``__file__`` points to.
    """
    found = [PACKAGED_TASKS, SOURCE_TASKS]
    for entry in sys.path:
        copy = Path(entry or ".").absolute() / "kernelenv" / "_tasks"
        if copy.is_dir() and copy not in found:
            found.append(copy)
    return found


def answer_key_dirs(library: TaskLibrary | None = None) -> list[Path]:
    """Folders agent kernels must not read: the shipped tasks, and ``library``'s own folder.

    Solutions and graders live in the task notebooks, so whoever builds a pool for task
    episodes passes these as its ``hidden_paths``.
    """
    extra = [library.directory] if library is not None else []
    return [*shipped_task_dirs(), *extra]


def default_tasks_dir() -> Path:
    """The library shipped with kernelenv: the installed copy, else the source checkout's."""
    if PACKAGED_TASKS.is_dir():
        return PACKAGED_TASKS
    return SOURCE_TASKS


class TaskSummary(BaseModel):
    """A task as listings show it (``GET /tasks``, MCP ``list_tasks``, ``kernelenv tasks list``):
    never its solution or grader."""

    id: str = Field(description="Pass it to reset as task_id.")
    version: int = Field(description="Bumped whenever grading changes.")
    family: str = Field(description="pr_review, functions, data_analysis or multi_step.")
    difficulty: str = Field(description="easy, medium or hard.")
    title: str = Field(description="A short human title.")
    action: str = Field(description="'review' (submit ReviewAction fields) or 'code'.")
    limits: TaskLimits = Field(description="Episode budgets.")

    @classmethod
    def of(cls, task: Task) -> TaskSummary:
        """The summary of ``task``."""
        return cls(
            id=task.id,
            version=task.version,
            family=task.family.value,
            difficulty=task.difficulty.value,
            title=task.title,
            action="review" if task.uses_review_actions else "code",
            limits=task.limits,
        )


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
        self._read: dict[str, Task] = {}  # tasks read one by one (resolve)
        self._source_ids: dict[str, str] | None = None  # dataset id -> task id

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

    def resolve(self, names: Iterable[str]) -> list[Task]:
        """The task each name names: a task id, or else a dataset's own id (``HumanEval/0``,
        the ``source_id`` an import keeps). Reads only the notebooks named (and, for dataset
        ids, the others' metadata), so a few completions against a large imported library
        do not wait for every notebook to be parsed and checked.

        Raises:
            UnknownTaskError: a name is neither.
            TaskFormatError: a named notebook is not a valid task.
        """
        if self._tasks is not None:
            index = {t.source_id: t for t in self._tasks.values() if t.source_id}
            index.update(self._tasks)
            return [index.get(name) or self.get(name) for name in names]
        files = {path.stem: path for path in self.paths()}  # a name is never a path
        found = []
        for name in names:
            task_id = name if name in files else self._source_id_index().get(name)
            if task_id is None or task_id not in files:
                raise UnknownTaskError(name, [*files, *self._source_id_index()])
            if task_id not in self._read:
                self._read[task_id] = load_task(files[task_id])
            found.append(self._read[task_id])
        return found

    def _source_id_index(self) -> dict[str, str]:
        """Dataset ids to task ids, from the notebooks' metadata alone (a JSON read each)."""
        if self._source_ids is None:
            self._source_ids = {}
            for path in self.paths():
                try:
                    meta = json.loads(path.read_bytes())["metadata"]["kernelenv"]["task"]
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # not a task notebook: load_task says why if it is named
                if isinstance(meta, dict) and isinstance(meta.get("source_id"), str):
                    self._source_ids[meta["source_id"]] = path.stem
        return self._source_ids

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

    def summaries(self) -> list[TaskSummary]:
        """Every task's listing, sorted by id."""
        return [TaskSummary.of(self.tasks[task_id]) for task_id in self.ids()]

    def __len__(self) -> int:
        return len(self.tasks)


@lru_cache(maxsize=1)
def default_library() -> TaskLibrary:
    """The shared :class:`TaskLibrary` of the shipped tasks."""
    return TaskLibrary()


def as_library(library: TaskLibrary | str | os.PathLike[str] | None) -> TaskLibrary | None:
    """``library`` as a :class:`TaskLibrary`: a folder is read as one; None stays None."""
    if library is None or isinstance(library, TaskLibrary):
        return library
    return TaskLibrary(library)


@lru_cache(maxsize=16)
def library_at(directory: str | None) -> TaskLibrary:
    """The shared :class:`TaskLibrary` of a folder (``None``: the shipped tasks).

    Raises:
        TaskFormatError: the folder does not exist.
    """
    if directory is None:
        return default_library()
    if not Path(directory).is_dir():
        raise TaskFormatError(f"{directory}: no such folder of task notebooks")
    return TaskLibrary(Path(directory).resolve())
