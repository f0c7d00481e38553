"""Blocking facades over the async core, usable where an event loop already runs (Jupyter)."""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Self, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .errors import EnvClosedError
from .models import DEFAULT, CodeAction, CodeObservation, CodeState, Transform

if TYPE_CHECKING:
    from nbformat import NotebookNode

    from .tasks.grading import Grade

    # The env module builds its facade from this one, so it is named, not imported, here.
    KernelEnv = Any

T = TypeVar("T")


class PortalThread:
    """An event loop on a private thread that runs coroutines for blocking callers.

    Because the loop is not the caller's, this works from plain scripts and from inside a
    running loop (a Jupyter cell) alike. Every async object driven through one portal lives on
    its loop: do not also use it from another loop.
    """

    def __init__(self) -> None:
        self._portal: BlockingPortal | None = None
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the private loop and return its result."""
        with self._lock:
            if self._portal is None:
                self._portal_cm = start_blocking_portal(backend="asyncio")
                self._portal = self._portal_cm.__enter__()
        return self._portal.call(lambda: fn(*args, **kwargs))

    def stop(self) -> None:
        """Stop the loop and its thread. Safe to call twice."""
        with self._lock:
            cm, self._portal_cm, self._portal = self._portal_cm, None, None
        if cm is not None:
            cm.__exit__(None, None, None)


class BlockingTwin:
    """What every blocking twin shares: a private loop thread, and closing its async half.

    The async half (an env or a client) is closed by :meth:`close`, at the end of a ``with``
    block, or when the twin is garbage-collected unclosed: a forgotten twin must not leave a
    thread, kernels, a connection or a server running.
    """

    def __init__(self, target: Any, portal: PortalThread | None = None) -> None:
        self._target = target
        # A twin made from another (a fork) shares its loop, which only its maker stops.
        self._owns_portal = portal is None
        self._portal = portal or PortalThread()
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # noqa: BLE001 - nothing to report to at garbage collection
                pass

    def close(self) -> None:
        """Close the async half and stop the private loop. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._portal.call(self._target.close)
        finally:
            if self._owns_portal:
                self._portal.stop()

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise EnvClosedError("this environment is closed; create a new one")
        return self._portal.call(fn, *args, **kwargs)


class SyncKernelEnv(BlockingTwin):
    """The blocking twin of :class:`KernelEnv`: same methods, no ``await``.

    Example:
        >>> with KernelEnv().sync() as env:
        ...     env.reset()
        ...     env.step(CodeAction(code="print('hi')")).stdout
        'hi\\n'
    """

    def __init__(self, env: KernelEnv, portal: PortalThread | None = None) -> None:
        super().__init__(env, portal)
        self.env = env

    def reset(
        self, *, seed: int | None = None, episode_id: str | None = None, **options: Any
    ) -> CodeObservation:
        """See :meth:`KernelEnv.reset`."""
        return self._call(self.env.reset, seed=seed, episode_id=episode_id, **options)

    def step(
        self, action: CodeAction | str, *, timeout_s: float | None = DEFAULT
    ) -> CodeObservation:
        """See :meth:`KernelEnv.step`."""
        return self._call(self.env.step, action, timeout_s=timeout_s)

    def fork(self, n: int = 1) -> list[SyncKernelEnv]:
        """See :meth:`KernelEnv.fork`. The children run on this twin's loop: close them
        before this one."""
        children = self._call(self.env.fork, n)
        return [SyncKernelEnv(child, self._portal) for child in children]

    def grade(self) -> Grade:
        """See :meth:`KernelEnv.grade`."""
        return self._call(self.env.grade)

    def export_notebook(self, path: str | os.PathLike[str] | None = None) -> NotebookNode:
        """See :meth:`KernelEnv.export_notebook`."""
        return self._call(self.env.export_notebook, path)

    @property
    def state(self) -> CodeState:
        """See :attr:`KernelEnv.state`."""
        return self.env.state

    @property
    def transform(self) -> Transform | None:
        """The env's observation transform (see :attr:`KernelEnv.transform`)."""
        return self.env.transform

    @transform.setter
    def transform(self, value: Transform | None) -> None:
        self.env.transform = value

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run any coroutine function of the env (e.g. ``env.export_notebook``) blocking."""
        return self._call(fn, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Plain attributes of the async env (pool, episode, step_timeout_s, ...) read through.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.env, name)
