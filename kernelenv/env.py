"""KernelEnv: an episode of agent code run in its own IPython kernel (OpenEnv/Gymnasium shape)."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .episodes.episode import DEFAULT_MAX_HISTORY_BYTES, Episode, check_episode_id
from .episodes.export import episode_notebook_of, write_notebook
from .episodes.notebook_state import DISPLAY_UPDATES_KEY
from .errors import EnvClosedError, ForkError, InvalidActionError, ResetNeeded
from .models import (
    DEFAULT,
    CodeAction,
    CodeObservation,
    CodeState,
    ErrorInfo,
    OutputCallback,
    ReviewAction,
    StepRecord,
    StepStatus,
    Transform,
)
from .runtime.kernel import Kernel
from .runtime.outputs import DEFAULT_MAX_OUTPUT_BYTES, NOTEBOOK_STATE_TRUNCATED_KEY
from .runtime.pool import KernelPool
from .runtime.sizes import held_bytes
from .runtime.streaming import OutputSink, StepStream, run_streamed
from .runtime.throwaway_host import ForkCell, ForkRun, cell_observation, run_in_fork
from .sync import SyncKernelEnv
from .tasks.fork_grading import WarmGraders
from .tasks.library import answer_key_dirs, as_library, default_library
from .tasks.run import add_task_fields, grade_run, start_task, submit_review
from .tools.registry import ToolRegistry

if TYPE_CHECKING:
    from nbformat import NotebookNode

    from .episodes.journal import Journal
    from .sandbox.config import SandboxConfig
    from .tasks.format import Task
    from .tasks.grading import Grade
    from .tasks.library import TaskLibrary
    from .tools.bridge import ToolBridge

# How many request ids (and their observations) an episode remembers for safe retries.
REQUEST_ID_MEMORY = 256
# Interrupts close() sends a running step before it kills the kernel instead.
CLOSE_INTERRUPTS = 3

# The most children one fork() call makes (each is a kernel: memory and CPU are the bound).
MAX_FORKS = 16


class KernelEnv:
    """A code-execution environment whose episodes each run in a fresh IPython kernel.

    Example:
        >>> async with KernelEnv() as env:
        ...     await env.reset()
        ...     obs = await env.step(CodeAction(code="x = 40 + 2; x"))
        ...     obs.return_value
        '42'

    Args:
        pool: A shared :class:`KernelPool`. Without one the env makes its own of
            ``pool_size`` kernels and closes it with the env.
        pool_size: Ready kernels kept by the env's own pool.
        backend: Where the env's own pool keeps kernels: ``"local"`` (this machine) or
            ``"ray"`` (Ray actors, see ``kernelenv.runtime.ray``; needs ``kernelenv[ray]``).
        step_timeout_s: Default wall-clock budget of a step.
        max_step_timeout_s: The largest budget a step may have, whatever it asks for (a
            server's ``--max-step-timeout``); a larger one is cut to it and the observation's
            ``metadata["step_timeout_clamped"]`` says so. None: no maximum.
        interrupt_grace_s: How long an interrupted step may take to stop before the kernel is
            killed and replaced.
        max_output_bytes: Output kept per step; the rest is dropped with a visible marker.
        max_history_bytes: What an episode keeps of its steps (code and observations, for
            export, grading, forks and retries), about. Once reached, each further step is
            refused (``status`` aborted, ``done``, ``error.ename`` ``EpisodeHistoryFull``)
            until the next reset. ``None``: no cap.
        acquire_timeout_s: How long reset waits for a kernel from the pool.
        transform: Called on every step's observation (rewards, see ``kernelenv.integrations.transforms``).
        tools: Host-side tools defined as functions in every episode's kernel; their calls are
            recorded in ``metadata["tool_calls"]`` (see ``kernelenv.tools.registry``).
        journal: Records every episode durably as it happens (see ``kernelenv.episodes.journal``).
        task_library: Where ``reset(task_id=...)`` finds tasks: a :class:`TaskLibrary` or a
            folder of task notebooks (default: the shipped library).
        sandbox: Containment of the env's own pool's kernels (see ``kernelenv.sandbox.config``): a
            ``SandboxConfig`` or a level name; default the strongest level available.
    """

    def __init__(
        self,
        *,
        pool: KernelPool | None = None,
        pool_size: int = 1,
        backend: str = "local",
        step_timeout_s: float = 30.0,
        max_step_timeout_s: float | None = None,
        interrupt_grace_s: float = 1.0,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        max_history_bytes: int | None = DEFAULT_MAX_HISTORY_BYTES,
        acquire_timeout_s: float | None = 120.0,
        transform: Transform | None = None,
        tools: ToolRegistry | None = None,
        journal: Journal | None = None,
        task_library: TaskLibrary | str | os.PathLike[str] | None = None,
        sandbox: SandboxConfig | str | None = None,
    ) -> None:
        if step_timeout_s <= 0:
            raise ValueError(f"step_timeout_s must be positive, got {step_timeout_s}")
        if max_step_timeout_s is not None and max_step_timeout_s < step_timeout_s:
            raise ValueError(
                f"max_step_timeout_s ({max_step_timeout_s}) is below step_timeout_s "
                f"({step_timeout_s})"
            )
        if pool is not None and sandbox is not None:
            raise ValueError("pass sandbox to the KernelPool, not to an env that shares it")
        task_library = as_library(task_library)
        self._own_pool = pool is None
        self.pool = (
            pool
            if pool is not None
            else _own_pool(
                backend, pool_size, sandbox, answer_key_dirs(task_library), acquire_timeout_s
            )
        )
        self.step_timeout_s = step_timeout_s
        self.max_step_timeout_s = max_step_timeout_s
        self.interrupt_grace_s = interrupt_grace_s
        self.max_output_bytes = max_output_bytes
        self.max_history_bytes = max_history_bytes
        self.acquire_timeout_s = acquire_timeout_s
        self.transform = transform
        self.tools = tools
        self._tool_bridge = _tool_bridge(tools)
        self.journal = journal
        self.task_library = task_library
        self._kernel: Kernel | None = None
        self._episode: Episode | None = None
        self._recorded: OrderedDict[str, CodeObservation] = OrderedDict()
        self._lock: asyncio.Lock | None = None
        self._graders: WarmGraders | None = None
        self._closed = False
        # Called with the children of every fork() before they are returned (a server files
        # them as sessions of their own); raising closes them and fails the fork.
        self.fork_hook: Callable[[list[KernelEnv]], None] | None = None

    # -- public API -----------------------------------------------------------------------

    async def __aenter__(self) -> KernelEnv:
        if self._own_pool:
            try:
                await self.pool.start()
            except BaseException:
                await self.close()  # __aexit__ will not run: leave nothing started behind
                raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def state(self) -> CodeState:
        """The current episode's state (an empty state before the first reset)."""
        return self._episode.state.model_copy() if self._episode else CodeState()

    @property
    def episode(self) -> Episode | None:
        """The current episode (its steps, seed and options), or None before reset."""
        return self._episode

    @property
    def kernel(self) -> Kernel | None:
        """The kernel the current episode runs on (None before reset or after it died)."""
        return self._kernel

    async def reset(
        self, *, seed: int | None = None, episode_id: str | None = None, **options: Any
    ) -> CodeObservation:
        """Start a new episode on a fresh kernel and return its first observation.

        Args:
            seed: Seeds Python's ``random`` (and NumPy's global generator when imported)
                in the new kernel.
            episode_id: The id of the new episode (default: a random one).
            **options: Options of subclasses and wrappers. ``task_id`` starts a graded task:
                its setup runs in the new kernel and the observation carries its prompt.

        Raises:
            UnknownTaskError: no task has that id (the message suggests close names).
            InvalidEpisodeIdError: ``episode_id`` has characters or a length ids may not have
                (see :func:`kernelenv.episodes.episode.check_episode_id`).
        """
        self._check_open()
        if episode_id is not None:
            check_episode_id(episode_id)
        task = self._lookup_task(options.get("task_id"))
        async with self._step_lock():
            self._check_open()  # close() may have come while this reset waited
            self._release_kernel()
            if self.journal is not None and self._episode is not None:
                await self.journal.end(self._episode.episode_id, "reset")
            self._episode = None
            episode = Episode(episode_id=episode_id or uuid.uuid4().hex, seed=seed, options=options)
            episode.kept_bytes = held_bytes(options)  # kept (and copied into each fork)
            episode.state = CodeState(episode_id=episode.episode_id, seed=seed)
            self._recorded.clear()
            self._kernel = await self.pool.acquire(self.acquire_timeout_s)
            self._episode = episode
            if seed is not None:
                await self._kernel.execute(
                    _seed_code(seed), timeout_s=self.step_timeout_s, silent=True
                )
            observation = CodeObservation(
                metadata={"episode_id": episode.episode_id, "kernel_id": self._kernel.kernel_id}
            )
            if task is not None:
                await self._start_task(episode, task, observation)
            await self._attach_tools(episode.episode_id)
            if self.journal is not None:
                await self.journal.begin(
                    episode, kernel_name=self.pool.kernel_name, python=self.pool.python
                )
            return observation

    async def step(
        self,
        action: CodeAction | ReviewAction | str,
        *,
        timeout_s: float | None = DEFAULT,
        on_output: OutputCallback | None = None,
        keep: bool | None = None,
    ) -> CodeObservation:
        """Run the action's code in the episode's kernel and return what happened.

        Errors in the code are never raised: they come back in the observation
        (``status``, ``exit_code``, ``error``). A timeout interrupts the code; if that does not
        stop it the kernel is replaced and the next observation has ``kernel_restarted``.

        Args:
            action: A :class:`CodeAction` (or just the code as a string), or a
                :class:`ReviewAction` submitted on a pr_review task (graded at once).
            timeout_s: This step's budget in seconds (default: the action's, else the env's).
            on_output: Called with each :class:`~kernelenv.models.OutputEvent` of the cell as
                it arrives, in order, all before this returns (a function or a coroutine
                function). An exception it raises is raised once the step has ended.
            keep: False runs the code in a throwaway fork of the episode's kernel (see
                :mod:`kernelenv.runtime.throwaway`): the observation is what a normal step
                would show, and the episode's variables, files, step count and history stay
                as they were. Default: the action's ``keep`` (True).

        Raises:
            ResetNeeded: before the first :meth:`reset`.
            InvalidActionError: the action is not code, or ``on_output`` was given with a
                throwaway step (its outputs come back when it ends).
        """
        if on_output is None:
            return await self._step(action, timeout_s, None, keep)
        return await run_streamed(partial(self._step, action, timeout_s, keep=keep), on_output)

    def stream(
        self, action: CodeAction | ReviewAction | str, *, timeout_s: float | None = DEFAULT
    ) -> StepStream:
        """Run a step and iterate over its output events as they arrive, then its observation.

        Example:
            >>> async for item in env.stream("for i in range(3): print(i); time.sleep(1)"):
            ...     print(item)   # OutputEvent, OutputEvent, ..., then the CodeObservation

        See :meth:`step` for the arguments and :class:`~kernelenv.runtime.streaming.StepStream`.
        """
        return StepStream(partial(self._step, action, timeout_s))

    async def _step(
        self,
        action: CodeAction | ReviewAction | str,
        timeout_s: float | None,
        on_output: OutputSink | None,
        keep: bool | None = None,
    ) -> CodeObservation:
        self._check_open()
        if isinstance(action, ReviewAction):
            return await self._submit_review(action)
        action = _as_action(action)
        if self._episode is None:
            raise ResetNeeded("call reset() before step()")
        if not (action.keep if keep is None else keep):
            if on_output is not None:
                raise InvalidActionError(
                    "a throwaway step (keep=False) cannot stream its outputs; they are all in "
                    "its observation"
                )
            return await self._throwaway_step(action, timeout_s)
        budget = timeout_s if timeout_s is not DEFAULT else None
        budget = budget or action.timeout_s
        async with self._step_lock():
            # Checked under the lock, so a retry sent while the original runs waits for it
            # and gets its observation instead of running the code a second time.
            self._check_open()
            if action.request_id is not None and action.request_id in self._recorded:
                return self._recorded[action.request_id].model_copy(deep=True)
            episode = self._episode
            if episode is None:  # a concurrent close or failed reset ended it
                raise ResetNeeded("call reset() before step()")
            if self._history_full(episode):
                return self._history_full_observation(episode)
            if episode.task is not None:
                budget = episode.task.task.limits.step_budget(budget)
            budget, clamped = self._bounded_budget(budget or self.step_timeout_s)
            # Recorded as run: grading and replay give the step the same budget, wherever
            # the budget came from (the action, a server request, the task's default).
            action = action.model_copy(update={"timeout_s": budget})
            restarted = False
            if self._kernel is None:  # the previous step lost the kernel
                self._kernel = await self.pool.acquire(self.acquire_timeout_s)
                restarted = True
                await self._attach_tools(episode.episode_id)
            if episode.task is not None and episode.task.service is not None:
                episode.task.service.begin_step()
            loop = asyncio.get_running_loop()
            started_at = loop.time()
            outcome = await self._kernel.execute(
                action.code,
                timeout_s=budget,
                max_output_bytes=self.max_output_bytes,
                interrupt_grace_s=self.interrupt_grace_s,
                on_output=on_output,
            )
            observation = outcome.observation
            observation.kernel_restarted = restarted
            if clamped is not None:
                observation.metadata["step_timeout_clamped"] = clamped
            # Outputs of earlier steps this step updated (by display id): reported here, the
            # earlier observations stay as they were returned (export folds the updates).
            updates, dropped = episode.displays.step_done(
                episode.state.step_count + 1, outcome.displays, max_bytes=self.max_output_bytes
            )
            if updates:
                observation.metadata[DISPLAY_UPDATES_KEY] = updates
            if dropped:
                observation.metadata[NOTEBOOK_STATE_TRUNCATED_KEY] = True
            if outcome.late_output:
                observation.metadata["late_output"] = outcome.late_output
            if self._tool_bridge is not None:
                calls, not_recorded = self._tool_bridge.take_calls()
                if calls or self.tools is not None:
                    observation.metadata["tool_calls"] = calls
                if not_recorded:
                    observation.metadata["tool_calls_not_recorded"] = not_recorded
            if outcome.kernel_lost:
                self._release_kernel()
            observation.metadata.setdefault("episode_id", episode.episode_id)
            if self.transform is not None:
                # Transforms judge the code too (OpenEnv's key, so its transforms work as is).
                observation.metadata["last_code"] = action.code
                observation = self.transform(observation)
            steps_taken = episode.state.step_count + 1  # this one included
            if episode.task and steps_taken >= episode.task.task.limits.max_steps:
                observation.done = True
            await self._record(episode, action, observation, started_at)
            return observation

    async def _throwaway_step(
        self, action: CodeAction, timeout_s: float | None
    ) -> CodeObservation:
        """Run a step in a throwaway fork of the episode's kernel; nothing of the episode changes
        (unless the fork killed the episode's kernel itself: then, as after a crash, the next
        step runs on a fresh kernel)."""
        budget = timeout_s if timeout_s is not DEFAULT else None
        budget = budget or action.timeout_s
        async with self._step_lock():
            self._check_open()
            episode = self._episode
            if episode is None:
                raise ResetNeeded("call reset() before step()")
            if episode.task is not None:
                budget = episode.task.task.limits.step_budget(budget)
            budget, clamped = self._bounded_budget(budget or self.step_timeout_s)
            restarted = False
            if self._kernel is None:  # the previous step lost the kernel
                self._kernel = await self.pool.acquire(self.acquire_timeout_s)
                restarted = True
                await self._attach_tools(episode.episode_id)
            kernel = self._kernel
            loop = asyncio.get_running_loop()
            started_at = loop.time()
            if isinstance(kernel, Kernel):
                run = await run_in_fork(
                    kernel,
                    [ForkCell(action.code, budget, capture=True)],
                    max_output_bytes=self.max_output_bytes,
                    grace_s=self.interrupt_grace_s,
                    work_dir=kernel.work_dir,
                )
            else:  # a kernel on a Ray actor: the host cannot ask it to fork
                run = ForkRun(refused="throwaway steps need a local kernel (this one is on Ray)")
            observation = cell_observation(
                run, 0, timeout_s=budget, max_output_bytes=self.max_output_bytes
            )
            observation.duration_s = loop.time() - started_at
            observation.kernel_restarted = restarted
            if run.kernel_lost:
                self._release_kernel()
            observation.metadata["throwaway"] = True
            if clamped is not None:
                observation.metadata["step_timeout_clamped"] = clamped
            observation.metadata.setdefault("episode_id", episode.episode_id)
            if self.transform is not None:
                observation.metadata["last_code"] = action.code
                observation = self.transform(observation)
            return observation

    async def close(self) -> None:
        """End the episode and release the kernel (and the env's own pool). Safe to call twice.

        A step running meanwhile is interrupted (killed if interrupts do not stop it), and the
        kernel is released only once that step has returned its observation.
        """
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):  # also when the caller is being cancelled
            await self._stop_running_step()
            self._release_kernel()
            if self._graders is not None:
                await self._graders.aclose()
        if self._tool_bridge is not None:
            await self._tool_bridge.aclose()
        if self.journal is not None and self._episode is not None:
            await self.journal.end(self._episode.episode_id, "closed")
        if self._own_pool:
            await self.pool.aclose()

    async def export_notebook(self, path: str | os.PathLike[str] | None = None) -> NotebookNode:
        """The current episode as a Jupyter notebook, also written to ``path`` if given.

        See :mod:`kernelenv.episodes.export` for what the notebook holds.

        Raises:
            ResetNeeded: there is no episode yet.
        """
        if self._episode is None:
            raise ResetNeeded("there is no episode to export yet; call reset() first")
        notebook = episode_notebook_of(
            self._episode, kernel_name=self.pool.kernel_name, python=self.pool.python
        )
        if path is not None:
            await anyio.to_thread.run_sync(write_notebook, notebook, path)
        return notebook

    async def grade(self) -> Grade:
        """Grade the current task episode, never in the live kernel.

        Code tasks are graded by replaying the episode's steps in a throwaway fork of a warm
        kernel, and judged in a fork of a second warm kernel no attempt reaches (see
        :mod:`kernelenv.tasks.fork_grading`; the env keeps both from the pool until it
        closes); tasks with a host-side service in fresh kernels of the pool. pr_review tasks
        are graded by their last submitted review. Also sets ``state.last_score``.

        Raises:
            ResetNeeded: there is no episode, or it was not started with a ``task_id``.
        """
        self._check_open()
        episode = self._episode
        if episode is None or episode.task is None:
            raise ResetNeeded("grade() needs an episode started with reset(task_id=...)")
        async with self._step_lock():
            prelude = _seed_code(episode.seed) if episode.seed is not None else ""
            # Kept for the env's life (they never run attempt code); forks need local kernels.
            if self._graders is None and isinstance(self.pool, KernelPool):
                self._graders = WarmGraders(self.pool)
            grade = await grade_run(
                self.pool, episode.task, list(episode.steps), prelude, graders=self._graders
            )
            episode.state.last_score = grade.score
            return grade

    async def fork(self, n: int = 1) -> list[KernelEnv]:
        """Branch the live episode: ``n`` new envs holding this episode's state right now.

        Each child is an episode of its own (a new id, its own kernel, its own copy of the
        working directory) whose kernel is a fork of this one: variables, imports, defined
        functions and files are there, and this episode goes on unchanged. A child's exported
        notebook holds this episode's cells (marked inherited) before its own; its journal
        names this episode as its parent. Children share this env's pool and settings and are
        closed on their own (``close()`` or ``async with``).

        Raises:
            ResetNeeded: there is no episode yet.
            ForkError: the episode cannot be forked faithfully now: user threads or child
                processes are running, or its kernel died (the message says which).
            ValueError: ``n`` is not between 1 and :data:`MAX_FORKS`.
        """
        self._check_open()
        if not 1 <= n <= MAX_FORKS:
            raise ValueError(f"n must be between 1 and {MAX_FORKS}, got {n}")
        async with self._step_lock():
            episode = self._episode
            if episode is None:
                raise ResetNeeded("call reset() before fork()")
            if self._kernel is None or not await self._kernel.is_alive():
                raise ForkError(
                    "this episode's kernel is gone (it died or was replaced after a timeout), "
                    "so there is no live state to fork; step or reset first"
                )
            kernels = await self.pool.fork(self._kernel, n, timeout_s=self.step_timeout_s)
            children = []
            for kernel in kernels:
                child = KernelEnv(
                    pool=self.pool,
                    step_timeout_s=self.step_timeout_s,
                    max_step_timeout_s=self.max_step_timeout_s,
                    interrupt_grace_s=self.interrupt_grace_s,
                    max_output_bytes=self.max_output_bytes,
                    max_history_bytes=self.max_history_bytes,
                    acquire_timeout_s=self.acquire_timeout_s,
                    transform=self.transform,
                    tools=self.tools,
                    journal=self.journal,
                    task_library=self.task_library,
                )
                child._kernel = kernel
                child._episode = episode.forked(uuid.uuid4().hex)
                await child._attach_tools(child._episode.episode_id)
                if child.journal is not None:
                    await child.journal.begin(
                        child._episode, kernel_name=self.pool.kernel_name, python=self.pool.python
                    )
                    for record in child._episode.steps:
                        await child.journal.record_step(child._episode, record)
                children.append(child)
            if self.fork_hook is not None:
                try:
                    self.fork_hook(children)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        for child in children:
                            await child.close()
                    raise
            return children

    def sync(self) -> SyncKernelEnv:
        """A blocking facade with the same methods, usable inside a running event loop."""
        return SyncKernelEnv(self)

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EnvClosedError("this KernelEnv is closed; create a new one")

    async def _stop_running_step(self) -> None:
        """Wait for the step lock, interrupting (then killing) the kernel of a running step."""
        lock = self._step_lock()
        # An interrupt sent before the cell started is lost, so it is sent again each grace
        # period; a cell that survives CLOSE_INTERRUPTS of them is killed with its kernel.
        for attempt in itertools.count():
            kernel = self._kernel
            if lock.locked() and kernel is not None:
                if attempt < CLOSE_INTERRUPTS:
                    await kernel.interrupt()
                else:
                    await kernel.kill()
            with anyio.move_on_after(max(self.interrupt_grace_s, 0.2)):
                await lock.acquire()
                lock.release()  # nothing can take it again: the env is marked closed
                return

    def _step_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _attach_tools(self, episode_id: str) -> None:
        """Offer the env's tools, and the episode's task service, to the current kernel."""
        run = self._episode.task if self._episode is not None else None
        service = run.service if run is not None else None
        if self._kernel is None or (self._tool_bridge is None and service is None):
            return
        if self._tool_bridge is None:  # a task service needs a bridge even without tools=
            self._tool_bridge = _tool_bridge(ToolRegistry())
        assert self._tool_bridge is not None
        await self._tool_bridge.open()
        await self._tool_bridge.attach(
            self._kernel,
            episode_id,
            timeout_s=self.step_timeout_s,
            extra_tools=service.tools if service else (),
            exceptions=service.exceptions if service else None,
        )

    def _lookup_task(self, task_id: str | None) -> Task | None:
        if task_id is None:
            return None
        if self.task_library is None:
            self.task_library = default_library()
        return self.task_library.get(task_id)

    def _bounded_budget(self, budget: float) -> tuple[float, dict[str, float] | None]:
        """The budget a step runs with, and what was asked for when the server's maximum cut it."""
        limit = self.max_step_timeout_s
        if limit is None or budget <= limit:
            return budget, None
        return limit, {"requested_s": budget, "max_step_timeout_s": limit}

    async def _start_task(self, episode: Episode, task: Task, observation: CodeObservation) -> None:
        assert self._kernel is not None
        try:
            episode.task = await start_task(self._kernel, task)
        except BaseException:
            self._release_kernel()
            self._episode = None
            raise
        episode.state.task_id = task.id
        episode.state.difficulty = task.difficulty.value
        add_task_fields(observation, task)

    async def _submit_review(self, action: ReviewAction) -> CodeObservation:
        episode = self._episode
        if episode is None:
            raise ResetNeeded("call reset() before step()")
        if episode.task is None:
            raise InvalidActionError("a ReviewAction needs an episode started with a task_id")
        async with self._step_lock():
            self._check_open()
            if action.request_id is not None and action.request_id in self._recorded:
                return self._recorded[action.request_id].model_copy(deep=True)
            if self._history_full(episode):
                return self._history_full_observation(episode)
            loop = asyncio.get_running_loop()
            started_at = loop.time()
            observation = await submit_review(self.pool, episode.task, action)
            observation.metadata.setdefault("episode_id", episode.episode_id)
            if episode.task.last_grade is not None:
                episode.state.last_score = episode.task.last_grade.score
            # Recorded like a code step, so export, the journal and recovery keep it.
            await self._record(episode, action, observation, started_at)
            return observation

    async def _record(
        self,
        episode: Episode,
        action: CodeAction | ReviewAction,
        observation: CodeObservation,
        started_at: float,
    ) -> None:
        """Count a finished step, keep it, journal it, and remember its request id."""
        episode.state.step_count += 1
        episode.state.last_exit_code = observation.exit_code
        ended_at = asyncio.get_running_loop().time()
        episode.keep(
            StepRecord(action, observation, started_at, ended_at),
            copies=1 if action.request_id is None else 2,  # _remember keeps a copy
        )
        if self.journal is not None:  # durable before the observation is returned
            await self.journal.record_step(episode, episode.steps[-1])
        if action.request_id is not None:
            self._remember(action.request_id, observation)

    def _history_full(self, episode: Episode) -> bool:
        return self.max_history_bytes is not None and episode.kept_bytes >= self.max_history_bytes

    def _history_full_observation(self, episode: Episode) -> CodeObservation:
        """A step refused, not run nor recorded: the episode keeps all it may."""
        limit = self.max_history_bytes
        message = (
            f"this episode keeps {episode.kept_bytes} bytes of steps, its cap is {limit} "
            "(max_history_bytes): the step was not run; reset to start a new episode"
        )
        return CodeObservation(
            stderr=message + "\n",
            exit_code=StepStatus.ABORTED.exit_code,
            status=StepStatus.ABORTED,
            done=True,
            error=ErrorInfo(ename="EpisodeHistoryFull", evalue=message),
            metadata={
                "episode_id": episode.episode_id,
                "history_full": True,
                "history_bytes": episode.kept_bytes,
                "max_history_bytes": limit,
            },
        )

    def _release_kernel(self) -> None:
        if self._tool_bridge is not None:
            self._tool_bridge.detach()
        if self._kernel is not None:
            self.pool.release(self._kernel)
            self._kernel = None

    def _remember(self, request_id: str, observation: CodeObservation) -> None:
        self._recorded[request_id] = observation.model_copy(deep=True)
        while len(self._recorded) > REQUEST_ID_MEMORY:
            self._recorded.popitem(last=False)


def _own_pool(
    backend: str,
    size: int,
    sandbox: SandboxConfig | str | None,
    hidden_paths: list[Path],
    acquire_timeout_s: float | None,
) -> KernelPool:
    if backend == "local":
        return KernelPool(size=size, sandbox=sandbox, hidden_paths=hidden_paths)
    if backend == "ray":
        from .runtime.ray import RayKernelPool  # Ray is an optional extra

        # One env runs one kernel at a time: one actor is enough.
        options: dict[str, Any] = {"hidden_paths": [str(p) for p in hidden_paths]}
        if sandbox is not None:
            options["sandbox"] = sandbox
        # Placing the actor is part of acquiring a kernel: bounded by the same timeout.
        return RayKernelPool(  # type: ignore[return-value]
            actors=1, size=size, pool_options=options, start_timeout_s=acquire_timeout_s
        )
    raise ValueError(f"unknown backend {backend!r}; use 'local' or 'ray'")


def _tool_bridge(tools: ToolRegistry | None) -> ToolBridge | None:
    if tools is None:
        return None
    from .tools.bridge import ToolBridge

    return ToolBridge(tools)


def _as_action(action: CodeAction | str) -> CodeAction:
    if isinstance(action, CodeAction):
        return action
    if isinstance(action, str):
        return CodeAction(code=action)
    raise InvalidActionError(
        f"step() takes a CodeAction or a string of code, not {type(action).__name__}"
    )


def _seed_code(seed: int) -> str:
    return (
        "import random as _kernelenv_random, sys as _kernelenv_sys\n"
        f"_kernelenv_random.seed({int(seed)})\n"
        "if 'numpy' in _kernelenv_sys.modules:\n"
        f"    _kernelenv_sys.modules['numpy'].random.seed({int(seed)} % 2**32)\n"
        "del _kernelenv_random, _kernelenv_sys\n"
    )
