"""Blocking facades over the async core, usable where an event loop already runs (Jupyter)."""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401 - imported before our exit hook is registered
import logging
import os
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Self, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .errors import EnvClosedError
from .models import DEFAULT, CodeAction, CodeObservation, CodeState, Transform

if TYPE_CHECKING:
    from nbformat import NotebookNode

    from .models import OutputCallback
    from .tasks.grading import Grade

    # The env module builds its facade from this one, so it is named, not imported, here.
    KernelEnv = Any

log = logging.getLogger(__name__)

T = TypeVar("T")

# Longest a clean-up at exit (or at garbage collection) waits for its async half: past it the
# loop is stopped and the pool's synchronous clean-up kills what is left.
CLOSE_TIMEOUT_S = 20.0


class PortalThread:
    """An event loop on a private thread that runs coroutines for blocking callers.

    Because the loop is not the caller's, this works from plain scripts and from inside a
    running loop (a Jupyter cell) alike. Every async object driven through one portal lives on
    its loop: do not also use it from another loop.
    """

    def __init__(self) -> None:
        self._portal: BlockingPortal | None = None
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._thread_id: int | None = None
        self._stopped = False
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the private loop and return its result."""
        return self._started().call(lambda: fn(*args, **kwargs))

    def call_within(
        self, timeout_s: float, fn: Callable[..., Awaitable[Any]], *args: Any
    ) -> None:
        """Run ``fn(*args)`` on the loop, giving up (and cancelling it) after ``timeout_s``.

        Raises:
            TimeoutError: it did not finish in time.
        """
        future = self._started().start_task_soon(fn, *args)
        try:
            future.result(timeout_s)
        except FutureTimeoutError:
            future.cancel()
            raise TimeoutError(f"did not finish within {timeout_s} s") from None

    @property
    def on_loop_thread(self) -> bool:
        """Whether the caller is the loop's own thread (which must not block on the loop)."""
        return self._thread_id == threading.get_ident()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called (a stopped portal runs nothing more)."""
        return self._stopped

    def stop(self) -> None:
        """Stop the loop and its thread, cancelling what still runs on it. Safe to call twice."""
        with self._lock:
            self._stopped = True
            cm, portal = self._portal_cm, self._portal
            self._portal_cm, self._portal = None, None
        if cm is None or portal is None:
            return
        # Cancelling what is left lets a stop after a timed-out close finish at once.
        portal.call(portal.stop, True)
        cm.__exit__(None, None, None)

    def _started(self) -> BlockingPortal:
        with self._lock:
            if self._stopped:
                # Objects of the stopped loop cannot move to a new one.
                raise EnvClosedError("this object is closed (its event loop was stopped)")
            if self._portal is None:
                self._portal_cm = start_blocking_portal(backend="asyncio")
                self._portal = self._portal_cm.__enter__()
                self._thread_id = self._portal.call(_thread_id)
            return self._portal


async def _thread_id() -> int:
    return threading.get_ident()


# -- clean-up of blocking objects nobody closed -------------------------------------------
#
# At exit Python runs threading's exit hooks and joins non-daemon threads, then ``atexit``
# handlers, then finalizes modules, by which time daemon threads (a portal's loop among them)
# are frozen. A facade closed from ``__del__`` during finalization waited forever for its
# frozen loop: every plain script that did not close its env hung after printing. So every
# facade's closer is registered here and run by a ``threading._register_atexit`` hook, which
# runs before all of that. Those hooks run newest first, and concurrent.futures registers its
# own (which shuts down asyncio's default executor, used by ``to_thread`` during a close) when
# imported, so importing it above makes ours run while every loop and executor still work.
# The same closer is the facade's ``weakref.finalize``, so an object collected early is closed
# then; a finalizer runs at most once, whichever comes first (``close()``, collection, exit)
# and from whichever thread.

_open_closers: dict[weakref.finalize, None] = {}  # insertion-ordered
_open_closers_lock = threading.Lock()


def close_when_collected(
    owner: object,
    portal: PortalThread,
    *closes: Callable[[], Awaitable[Any]],
    stop_portal: bool = True,
) -> weakref.finalize:
    """Arrange for ``closes`` to run on ``portal``, then the portal to stop, exactly once.

    That happens on the first of: calling the returned finalizer (an explicit ``close()``),
    ``owner`` being garbage-collected, or the interpreter exiting. The callables must not
    refer to ``owner``, or it would never be collected. ``stop_portal=False`` leaves a shared
    portal to its owner; once that has stopped it, there is nothing left to close.
    """
    finalizer = weakref.finalize(owner, _close_on_portal, portal, closes, stop_portal)
    finalizer.atexit = False  # the hook below runs earlier, while the loop still works
    with _open_closers_lock:
        for done in [f for f in _open_closers if not f.alive]:
            del _open_closers[done]
        _open_closers[finalizer] = None
    return finalizer


def _close_on_portal(
    portal: PortalThread, closes: tuple[Callable[[], Awaitable[Any]], ...], stop_portal: bool
) -> None:
    if sys.is_finalizing() or portal.stopped:
        return  # too late for the loop; the pool's own finalizer kills its kernels
    if portal.on_loop_thread:
        # Collected by code running on the loop itself, which cannot wait for the loop.
        threading.Thread(
            target=_close_on_portal, args=(portal, closes, stop_portal), name="kernelenv-close"
        ).start()
        return
    try:
        for close in closes:
            try:
                portal.call_within(CLOSE_TIMEOUT_S, close)
            except Exception as exc:  # noqa: BLE001 - at collection or exit nobody can catch it
                log.warning("closing a blocking kernelenv object failed: %r", exc)
    finally:
        if stop_portal:
            portal.stop()


def close_now(finalizer: weakref.finalize) -> None:
    """Run a closer of :func:`close_when_collected` now, raising what it raises; once only."""
    detached = finalizer.detach()  # atomic: a concurrent close, collection or exit sees None
    if detached is None:
        return
    _, _, (portal, closes, stop_portal), _ = detached
    if portal.stopped:
        return  # a shared loop its owner stopped, closing what ran on it
    try:
        for close in closes:
            portal.call(close)
    finally:
        if stop_portal:
            portal.stop()


def _close_all_at_exit() -> None:
    with _open_closers_lock:
        pending = list(_open_closers)[::-1]  # newest first, like nested ``with`` blocks
        _open_closers.clear()
    for finalizer in pending:
        finalizer()


threading._register_atexit(_close_all_at_exit)  # type: ignore[attr-defined]


class BlockingTwin:
    """What every blocking twin shares: a private loop thread, and closing its async half.

    The async half (an env or a client) is closed by :meth:`close`, at the end of a ``with``
    block, when the twin is garbage-collected unclosed, or at interpreter exit: a forgotten
    twin must neither keep a script from exiting nor leave a thread, kernels, a connection or
    a server running.
    """

    def __init__(self, target: Any, portal: PortalThread | None = None) -> None:
        self._target = target
        # A twin made from another (a fork) shares its loop, which only its maker stops.
        self._portal = portal or PortalThread()
        self._closer = close_when_collected(
            self, self._portal, target.close, stop_portal=portal is None
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether the twin is closed (by :meth:`close`, or at interpreter exit)."""
        return not self._closer.alive

    def close(self) -> None:
        """Close the async half and stop the private loop. Safe to call twice, from any thread."""
        close_now(self._closer)

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self.closed:
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
        self,
        action: CodeAction | str,
        *,
        timeout_s: float | None = DEFAULT,
        on_output: OutputCallback | None = None,
        keep: bool | None = None,
    ) -> CodeObservation:
        """See :meth:`KernelEnv.step` (``on_output`` runs on the facade's private loop thread)."""
        return self._call(
            self.env.step, action, timeout_s=timeout_s, on_output=on_output, keep=keep
        )

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
