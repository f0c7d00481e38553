"""A kernelenv episode shaped for TRL's ``GRPOTrainer(environment_factory=...)``.

TRL's contract: the factory makes one environment per rollout; ``reset(**row)`` is called with
each dataset row and may return text appended to the prompt; every public method other than
``reset`` and ``get_reward`` is a tool whose JSON schema ``transformers.utils.get_json_schema``
builds from its type hints and Google docstring; ``get_reward()`` scores the finished rollout.
TRL calls all of them synchronously, so they block (on a private event loop thread).

Example:
    >>> factory = KernelEnvFactory(pool_size=8)
    >>> trainer = GRPOTrainer(model=..., train_dataset=..., environment_factory=factory)
    >>> trainer.train()
    >>> factory.close()   # else done when the program exits

``environment_factory=KernelToolEnv`` works too: instances then share a default factory that
is closed when the program exits.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ..env import Episode, KernelEnv
from ..models import StepStatus, observation_summary, task_text
from ..runtime.outputs import DEFAULT_MAX_OUTPUT_BYTES
from ..runtime.pool import KernelPool
from ..sync import PortalThread, close_now, close_when_collected
from ..tasks.library import TaskLibrary, answer_key_dirs, as_library

RewardFunction = Callable[[Episode, dict[str, Any]], float]


class KernelEnvFactory:
    """Makes :class:`KernelToolEnv` instances that share one warm kernel pool.

    Pass it as ``environment_factory``: TRL calls it once per concurrent rollout and resets
    the instances for every batch, so resets take a pre-started kernel instead of booting one.

    Args:
        pool_size: Ready kernels kept for resets (about one per rollout of a batch is ideal).
        backend: ``"local"`` or ``"ray"`` (kernels on Ray actors, see ``kernelenv.runtime.ray``).
        step_timeout_s: Budget of one tool call's code.
        max_output_bytes: Output kept per tool call.
        reward_fn: ``(episode, row) -> float`` replacing the default reward (see
            :meth:`KernelToolEnv.get_reward`).
        pool_options: Further keyword arguments of the pool (e.g. ``warmup_code``).
        task_library: Where rows' ``task_id`` are found: a :class:`TaskLibrary` or a folder
            of task notebooks (default: the shipped library).
    """

    def __init__(
        self,
        *,
        pool_size: int = 4,
        backend: str = "local",
        step_timeout_s: float = 30.0,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        reward_fn: RewardFunction | None = None,
        pool_options: dict[str, Any] | None = None,
        task_library: TaskLibrary | str | os.PathLike[str] | None = None,
    ) -> None:
        self.step_timeout_s = step_timeout_s
        self.max_output_bytes = max_output_bytes
        self.reward_fn = reward_fn
        self.task_library = as_library(task_library)
        # Task episodes: answer keys stay out of the agents' kernels.
        hidden = [str(p) for p in answer_key_dirs(self.task_library)]
        pool_options = {"hidden_paths": hidden, **(pool_options or {})}
        if backend == "local":
            self.pool: Any = KernelPool(size=pool_size, **pool_options)
        elif backend == "ray":
            from ..runtime.ray import RayKernelPool

            self.pool = RayKernelPool(size=pool_size, pool_options=pool_options)
        else:
            raise ValueError(f"unknown backend {backend!r}; use 'local' or 'ray'")
        self.portal = PortalThread()
        self._envs: weakref.WeakSet[KernelEnv] = weakref.WeakSet()
        # Closed by close(), or when collected, or at exit (a factory kept at module level).
        self._closer = close_when_collected(
            self, self.portal, functools.partial(_close_envs_and_pool, self._envs, self.pool)
        )
        # Start filling the pool now, while the trainer is still loading its model.
        self.portal.call(self.pool.start)

    @classmethod
    def default(cls) -> KernelEnvFactory:
        """The shared factory of ``KernelToolEnv()`` made without one (closed at exit)."""
        global _default
        with _default_lock:
            if _default is None or _default.closed:
                _default = cls()
            return _default

    def __call__(self) -> KernelToolEnv:
        """A new environment for one rollout."""
        return KernelToolEnv(self)

    def new_env(self) -> KernelEnv:
        """A :class:`KernelEnv` on the shared pool, closed with the factory."""
        env = KernelEnv(
            pool=self.pool,
            step_timeout_s=self.step_timeout_s,
            max_output_bytes=self.max_output_bytes,
            task_library=self.task_library,
        )
        self._envs.add(env)
        return env

    def __enter__(self) -> KernelEnvFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether the factory is closed (by :meth:`close`, or at interpreter exit)."""
        return not self._closer.alive

    def close(self) -> None:
        """Close every environment made by this factory and stop its kernels.

        Safe to call twice and from any thread; a factory never closed is closed when it is
        garbage-collected or when the program exits.
        """
        close_now(self._closer)


async def _close_envs_and_pool(envs: weakref.WeakSet[KernelEnv], pool: Any) -> None:
    for env in list(envs):
        await env.close()
    await pool.aclose()


class KernelToolEnv:
    """One rollout's environment: a Python kernel the model drives through ``run_python``.

    The dataset columns it reads: ``task_id`` (a task of the factory's library: :meth:`reset`
    returns its prompt and :meth:`get_reward` its grade), ``seed`` (seeds ``random`` in the
    kernel) and ``answer`` (for rows without a task: what the last call's output is checked
    against). ``prompt`` is TRL's own; every column reaches a factory's ``reward_fn``.

    Args:
        factory: The factory whose warm pool this environment uses (default: one shared
            factory, closed at exit).
    """

    def __init__(self, factory: KernelEnvFactory | None = None) -> None:
        self._factory = factory or KernelEnvFactory.default()
        self._env = self._factory.new_env()
        self._row: dict[str, Any] = {}

    def reset(self, **row: Any) -> str | None:
        """Start a fresh episode for a dataset row (TRL passes the row's columns).

        Returns:
            The task's prompt for a row with ``task_id``, after a blank line (TRL appends it
            to the row's last user message); None for a row without a task.
        """
        self._row = dict(row)
        options = {"task_id": row["task_id"]} if row.get("task_id") else {}
        observation = self._factory.portal.call(self._env.reset, seed=row.get("seed"), **options)
        if observation.task_description is None:
            return None
        return "\n\n" + task_text(observation)

    def run_python(self, code: str) -> str:
        """Run Python code in a persistent Jupyter kernel and return what it printed.

        Variables, imports and files persist between calls in the same episode, as in a
        notebook. The value of the last line is shown, like a notebook cell's result.

        Args:
            code: Python source code to execute, like a notebook cell.

        Returns:
            The status of the run, its printed output, any error and the last line's value.
        """
        observation = self._factory.portal.call(self._env.step, code)
        return observation_summary(observation)

    def get_reward(self) -> float:
        """Score the finished rollout, in [0, 1].

        A task row is graded by the task's hidden grader (in fresh kernels, never the live
        one). A row with an ``answer`` scores 1.0 when the last call printed or returned
        exactly that answer. Any other row scores 1.0 when its last call ran without error.
        A factory's ``reward_fn`` replaces all of this.
        """
        episode = self._env.episode
        if episode is None:
            return 0.0
        if self._factory.reward_fn is not None:
            return float(self._factory.reward_fn(episode, self._row))
        if episode.task is not None:
            return self._factory.portal.call(self._env.grade).score
        if not episode.steps:
            return 0.0
        last = episode.steps[-1].observation
        answer = self._row.get("answer")
        if answer is not None:
            return 1.0 if _answer_matches(str(answer), last.stdout, last.return_value) else 0.0
        return 1.0 if last.status is StepStatus.OK else 0.0


def _answer_matches(answer: str, stdout: str, return_value: str | None) -> bool:
    answer = answer.strip()
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    candidates = set(lines[-1:])
    if return_value is not None:
        candidates |= {return_value.strip(), return_value.strip().strip("'\"")}
    return answer in candidates


_default: KernelEnvFactory | None = None
_default_lock = threading.Lock()

