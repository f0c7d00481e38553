"""A pytest plugin: task notebooks as test items (opt-in), and a ``kernelenv_env`` fixture.

Registered through the ``pytest11`` entry point, so it is active wherever kernelenv is
installed. Collection is opt-in: pass ``--kernelenv-tasks`` or set ``kernelenv_tasks = true``
in the ini file. Each task notebook then yields one item per attempt: ``reference`` (must
score >= 0.95), ``empty`` (<= 0.05) and ``wrong`` (strictly between), graded exactly as
``kernelenv tasks validate`` grades them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..sync import PortalThread, SyncKernelEnv
    from .format import Task


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kernelenv", "kernelenv task notebooks")
    group.addoption(
        "--kernelenv-tasks",
        action="store_true",
        default=None,
        help="collect kernelenv task notebooks (*.ipynb with kernelenv.task metadata) as tests",
    )
    parser.addini(
        "kernelenv_tasks", type="bool", default=False, help="collect kernelenv task notebooks"
    )
    parser.addini(
        "kernelenv_tasks_dir",
        default="",
        help="task folder the kernelenv_env fixture resets into (default: the shipped library)",
    )


def _collection_enabled(config: pytest.Config) -> bool:
    option = config.getoption("kernelenv_tasks")
    return bool(option if option is not None else config.getini("kernelenv_tasks"))


def _is_task_notebook(path: Path) -> bool:
    try:
        metadata = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError):
        return False
    return isinstance(metadata.get("kernelenv"), dict) and "task" in metadata["kernelenv"]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if (
        file_path.suffix == ".ipynb"
        and _collection_enabled(parent.config)
        and _is_task_notebook(file_path)
    ):
        return TaskNotebook.from_parent(parent, path=file_path)
    return None


class TaskNotebook(pytest.File):
    """A task notebook: one test item per validation attempt."""

    def collect(self) -> Iterator[TaskAttempt]:
        from ..errors import TaskFormatError
        from .format import load_task
        from .validation import attempts_of

        try:
            task = load_task(self.path)
        except TaskFormatError as exc:  # a collection error that says what is wrong, briefly
            raise self.CollectError(str(exc)) from exc
        for attempt in attempts_of(task):
            yield TaskAttempt.from_parent(self, name=attempt, task=task, attempt=attempt)


class TaskAttemptFailed(Exception):
    """An attempt scored outside its rule."""


class TaskAttempt(pytest.Item):
    """Grade one attempt at a task (reference, empty or wrong) and check its score."""

    def __init__(self, *, task: Task, attempt: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task = task
        self.attempt = attempt

    def runtest(self) -> None:
        from .validation import check_attempt

        runner = _grading_runner(self.config)
        check = runner.portal.call(check_attempt, runner.pool, self.task, self.attempt)
        if not check.ok:
            raise TaskAttemptFailed(
                f"{self.task.id}: the {self.attempt} attempt scored {check.score:.4f}, "
                f"expected {check.expected}. Grader feedback: {check.feedback}"
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        if isinstance(excinfo.value, TaskAttemptFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.task.id}::{self.attempt}"


class _GradingRunner:
    """One event loop thread and one kernel pool for all task items of a session."""

    def __init__(self) -> None:
        from ..runtime.pool import KernelPool
        from ..sync import PortalThread

        self.portal: PortalThread = PortalThread()
        self.pool = KernelPool(size=2)
        self.portal.call(self.pool.start)

    def close(self) -> None:
        try:
            self.portal.call(self.pool.aclose)
        finally:
            self.portal.stop()


_RUNNER_KEY = pytest.StashKey[_GradingRunner]()


def _grading_runner(config: pytest.Config) -> _GradingRunner:
    if _RUNNER_KEY not in config.stash:
        config.stash[_RUNNER_KEY] = _GradingRunner()
    return config.stash[_RUNNER_KEY]


def pytest_unconfigure(config: pytest.Config) -> None:
    runner = config.stash.get(_RUNNER_KEY, None)
    if runner is not None:
        del config.stash[_RUNNER_KEY]
        runner.close()


@pytest.fixture
def kernelenv_env(pytestconfig: pytest.Config) -> Iterator[SyncKernelEnv]:
    """A blocking :class:`~kernelenv.KernelEnv` with an episode already started, closed after
    the test.

    ``kernelenv_env.step(...)`` works at once. ``reset`` starts another episode, also into the
    tasks of the ``kernelenv_tasks_dir`` ini option (default: the shipped library), e.g.
    ``kernelenv_env.reset(task_id="task_easy_1")``, then ``step`` and ``grade``.
    """
    from ..env import KernelEnv
    from .library import TaskLibrary

    directory = pytestconfig.getini("kernelenv_tasks_dir") or None
    if directory is not None:
        directory = Path(pytestconfig.rootpath, directory)
    with KernelEnv(task_library=TaskLibrary(directory)).sync() as env:
        env.reset()
        yield env
