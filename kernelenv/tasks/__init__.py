"""Graded tasks: the task notebook format, libraries of them, a task inside an episode,
grading in fresh kernels, review scoring, validation, the ``kernelenv tasks`` command and the
pytest plugin."""

from typing import Any


def __getattr__(name: str) -> Any:
    # `kernelenv.tasks.evaluate` without importing the env machinery with the package.
    if name == "evaluate":
        from .evaluation import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
