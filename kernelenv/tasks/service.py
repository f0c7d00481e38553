"""A task's service run on the host: its state lives in this process, its functions are tools.

``multi_step`` tasks give the agent an API with rules (one call per step, rate limits) and
data it must fetch. If that API lived in the agent's kernel, agent code could read its data
or reset its rules. So the task's ``service`` cells run here, on the host, in a fresh
namespace per episode (and per grading replay); the names the cells list in ``__all__`` reach
the kernel only as host-side tools (see :mod:`kernelenv.tools.bridge`): functions as stubs
that call across a Unix socket, exception classes as look-alikes the stubs raise.

In plain Jupyter a ``service`` cell is an ordinary cell: it runs in the kernel, and the
notebook still runs top to bottom. ``current_step()`` is defined in the service's namespace
on the host; a service cell falls back to IPython's execution counter when it is missing.
"""

from __future__ import annotations

import builtins
import copy
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

from ..errors import TaskFormatError
from ..tools.registry import Tool
from .format import Task


class TaskService:
    """One instance of a task's service, with the tools and exceptions it exports.

    Args:
        task: A task with ``service`` cells; they run at once, in a fresh namespace.

    Raises:
        TaskFormatError: the cells fail, or their ``__all__`` does not name functions and
            exception classes they define.
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self.step = 0
        # Tools run on worker threads and agent code may call from several threads: the
        # service's rules (one call per step) need its calls one at a time.
        self._lock = threading.Lock()
        self.namespace: dict[str, Any] = {
            "__name__": f"kernelenv_service_{task.id}",
            "__builtins__": builtins,
            "current_step": self.current_step,
        }
        try:
            exec(compile(task.service, f"<service of task {task.id}>", "exec"), self.namespace)
        except Exception as exc:
            raise TaskFormatError(
                f"the service of task {task.id!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        self.tools: list[Tool] = []
        self.exceptions: dict[str, type[BaseException]] = {}
        exported = self.namespace.get("__all__")
        if not isinstance(exported, (list, tuple)) or not exported:
            raise TaskFormatError(
                f"the service of task {task.id!r} must list what agent code may call in "
                "__all__ (functions and exception classes)"
            )
        for name in exported:
            value = self.namespace.get(name)
            if isinstance(value, type) and issubclass(value, Exception):
                self.exceptions[name] = value
            elif inspect.isfunction(value):
                self.tools.append(Tool.from_function(self._one_at_a_time(value), name=name))
            else:
                raise TaskFormatError(
                    f"{name!r} in the __all__ of task {task.id!r}'s service is not a function "
                    "or an exception class it defines"
                )

    def __deepcopy__(self, memo: dict[int, Any]) -> TaskService:
        """The same service in the same state, for a forked episode (see :meth:`fork`)."""
        return self.fork()

    def fork(self) -> TaskService:
        """A twin in this service's state that goes on alone (a forked episode's service).

        The cells run again in a fresh namespace, whose functions therefore see the twin's
        state; then every data value (not functions, classes or modules) is deep-copied over.
        """
        twin = TaskService(self.task)
        for name, value in self.namespace.items():
            if name.startswith("__") or callable(value) or inspect.ismodule(value):
                continue
            twin.namespace[name] = copy.deepcopy(value)
        twin.step = self.step
        return twin

    def current_step(self) -> int:
        """The number of the step running now (1 for the first), as the service sees it."""
        return self.step

    def begin_step(self) -> None:
        """Count a step of agent code; call it before the step runs."""
        self.step += 1

    def _one_at_a_time(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def serialised(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return function(*args, **kwargs)

        return serialised
