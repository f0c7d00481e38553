"""The Ray backend: kernels kept on Ray actors, each owning a kernel pool on its own node."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio

try:
    import ray
    from ray.exceptions import RayActorError
except ImportError as exc:  # an optional extra
    raise ImportError("the Ray backend needs Ray: pip install 'kernelenv[ray]'") from exc

from ..errors import (
    EnvClosedError,
    KernelCommunicationError,
    KernelStartError,
    PoolExhaustedError,
)
from ..models import ErrorInfo, StepStatus
from .kernel import Kernel, StepOutcome
from .outputs import DEFAULT_MAX_OUTPUT_BYTES, OutputCollector
from .pool import KernelPool
from .streaming import OutputSink, events_of_outputs

log = logging.getLogger(__name__)

# Slack on top of a step's own budget before a silent actor is given up as hung: the actor
# enforces the budget itself, so this only trips when the actor (or its node) stops answering.
ACTOR_CALL_MARGIN_S = 30.0

DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 1, "scheduling_strategy": "SPREAD"}


class KernelHost:
    """The body of a Ray actor: a :class:`KernelPool` on the actor's node and its lent kernels.

    Kernels talk to their client over IPC sockets, so they stay on this actor's node; only
    kernel ids and step outcomes (small, picklable) cross Ray.

    Args:
        pool_options: Keyword arguments of the actor's :class:`KernelPool` (``size``,
            ``warmup_code``, a containment level, ...).
    """

    def __init__(self, pool_options: dict[str, Any]) -> None:
        self._pool = KernelPool(**pool_options)
        self._leased: dict[str, Kernel] = {}

    async def start(self) -> dict[str, Any]:
        """Start filling the pool; return where this actor runs."""
        await self._pool.start()
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        }

    async def acquire(self, timeout_s: float | None) -> str:
        """Lend a ready kernel and return its id."""
        kernel = await self._pool.acquire(timeout_s)
        self._leased[kernel.kernel_id] = kernel
        return kernel.kernel_id

    async def execute(self, kernel_id: str, code: str, options: dict[str, Any]) -> StepOutcome:
        """Run ``code`` on a lent kernel (see :meth:`Kernel.execute`)."""
        return await self._kernel(kernel_id).execute(code, **options)

    async def is_alive(self, kernel_id: str) -> bool:
        """Whether the lent kernel's process is still running."""
        kernel = self._leased.get(kernel_id)
        return kernel is not None and await kernel.is_alive()

    async def interrupt(self, kernel_id: str) -> None:
        """Interrupt the code running on a lent kernel."""
        await self._kernel(kernel_id).interrupt()

    async def release(self, kernel_id: str) -> None:
        """Take a kernel back; it is shut down in the background."""
        kernel = self._leased.pop(kernel_id, None)
        if kernel is not None:
            self._pool.release(kernel)

    async def counts(self) -> dict[str, int]:
        """How many kernels are ready, starting and lent out."""
        return {
            "ready": self._pool.ready_count,
            "starting": self._pool.starting_count,
            "leased": len(self._leased),
        }

    async def aclose(self) -> None:
        """Stop every kernel of this actor."""
        self._leased.clear()
        await self._pool.aclose()

    def _kernel(self, kernel_id: str) -> Kernel:
        try:
            return self._leased[kernel_id]
        except KeyError:
            raise KernelCommunicationError(
                f"kernel {kernel_id} is not lent out by this actor (released or never acquired)"
            ) from None


_KernelHostActor = ray.remote(KernelHost)


@dataclass(eq=False)
class RayHost:
    """One live actor of a :class:`RayKernelPool`, with where it runs and its open leases."""

    actor: Any
    info: dict[str, Any] = field(default_factory=dict)
    leases: int = 0
    dead: bool = False

    @property
    def node_id(self) -> str | None:
        """The Ray node the actor (and so its kernels) runs on."""
        return self.info.get("node_id")


class RemoteKernel:
    """A kernel lent by a Ray actor, with the methods :class:`KernelEnv` uses of a :class:`Kernel`.

    A dead or hung actor never raises from :meth:`execute`: the outcome reports the kernel as
    lost (status ``kernel_died``), so the episode goes on, on a fresh kernel of another actor.
    """

    def __init__(self, pool: RayKernelPool, host: RayHost, kernel_id: str) -> None:
        self.pool = pool
        self.host = host
        self.kernel_id = kernel_id
        self._released = False

    @property
    def node_id(self) -> str | None:
        """The Ray node this kernel runs on."""
        return self.host.node_id

    async def execute(
        self,
        code: str,
        *,
        timeout_s: float,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        interrupt_grace_s: float = 1.0,
        silent: bool = False,
        on_output: OutputSink | None = None,
    ) -> StepOutcome:
        """Run ``code`` on the actor's kernel (see :meth:`Kernel.execute`).

        Outputs do not stream across Ray: ``on_output`` gets them when the step has ended.
        """
        options = {
            "timeout_s": timeout_s,
            "max_output_bytes": max_output_bytes,
            "interrupt_grace_s": interrupt_grace_s,
            "silent": silent,
        }
        started = time.perf_counter()
        call = self.host.actor.execute.remote(self.kernel_id, code, options)
        try:
            with anyio.fail_after(timeout_s + interrupt_grace_s + ACTOR_CALL_MARGIN_S):
                outcome: StepOutcome = await call
        except RayActorError as exc:
            self.pool.host_lost(self.host, _first_line(exc))
            return self._lost_outcome("died", time.perf_counter() - started)
        except TimeoutError:
            self.pool.host_lost(self.host, "stopped answering")
            return self._lost_outcome("stopped answering", time.perf_counter() - started)
        outcome.observation.metadata.setdefault("node_id", self.node_id)
        if on_output is not None:
            for event in events_of_outputs(outcome.observation.outputs):
                on_output(event)
        return outcome

    async def is_alive(self) -> bool:
        """Whether the kernel and the actor holding it are both alive."""
        if self._released or self.host.dead:
            return False
        try:
            return await self.host.actor.is_alive.remote(self.kernel_id)
        except RayActorError:
            self.pool.host_lost(self.host, "died")
            return False

    async def interrupt(self) -> None:
        """Interrupt the running code (a no-op when the actor is gone)."""
        with contextlib.suppress(RayActorError, KernelCommunicationError):
            await self.host.actor.interrupt.remote(self.kernel_id)

    async def shutdown(self) -> None:
        """Give the kernel back to its actor, which stops it. Safe to call twice."""
        if self._released:
            return
        self._released = True
        self.host.leases -= 1
        if not self.host.dead:
            with contextlib.suppress(RayActorError):
                await self.host.actor.release.remote(self.kernel_id)

    def _lost_outcome(self, what: str, duration_s: float) -> StepOutcome:
        error = ErrorInfo(
            ename="KernelDied",
            evalue=f"The Ray actor holding this kernel {what} while running this cell. The "
            "episode's variables are lost; the next step runs on a fresh kernel of another actor.",
        )
        observation = OutputCollector(0).to_observation(
            StepStatus.KERNEL_DIED, error=error, duration_s=duration_s
        )
        observation.metadata.update({"actor_lost": True, "node_id": self.node_id})
        return StepOutcome(observation, kernel_lost=True)

    def __repr__(self) -> str:
        return f"RemoteKernel({self.kernel_id!r}, node={self.node_id!r})"


class RayKernelPool:
    """A :class:`KernelPool` look-alike whose kernels live on Ray actors, spread over nodes.

    Each of ``actors`` actors keeps ``size`` kernels ready on its own node; :meth:`acquire`
    lends one from the actor with the fewest kernels lent out. An actor found dead (or hung) is
    killed and replaced in the background. Use it as ``KernelEnv(pool=RayKernelPool(...))``
    (shared by many envs) or let ``KernelEnv(backend="ray")`` make one.

    Example:
        >>> async with RayKernelPool(actors=4, size=2) as pool:
        ...     envs = [KernelEnv(pool=pool) for _ in range(8)]

    Args:
        actors: How many actors to keep.
        size: Ready kernels kept by each actor.
        actor_options: Ray options of each actor (``num_cpus``, ``resources``,
            ``scheduling_strategy``, ``runtime_env``...); the default takes one CPU and
            spreads actors over nodes.
        pool_options: Further keyword arguments of each actor's :class:`KernelPool`.
        address: Ray cluster to join when Ray is not initialised yet (``"auto"``,
            ``"ray://head:10001"``); None joins the one ``RAY_ADDRESS`` names, else starts a
            local Ray.
        start_timeout_s: How long :meth:`start` (and ``async with``) waits for the actors to
            be placed and started (None: no limit). :meth:`acquire` is bounded by its own
            timeout.
    """

    def __init__(
        self,
        actors: int = 2,
        size: int = 1,
        *,
        actor_options: dict[str, Any] | None = None,
        pool_options: dict[str, Any] | None = None,
        address: str | None = None,
        start_timeout_s: float | None = 120.0,
    ) -> None:
        if actors < 1:
            raise ValueError(f"a RayKernelPool needs at least one actor, got {actors}")
        self.actor_count = actors
        self.size = size
        self.actor_options = {**DEFAULT_ACTOR_OPTIONS, **(actor_options or {})}
        self.pool_options = {**(pool_options or {}), "size": size}
        self.address = address
        self.start_timeout_s = start_timeout_s
        self.hosts: list[RayHost] = []
        self.lost_hosts = 0
        self._round_robin = itertools.count()
        self._started: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._start_error = "unknown cause"
        self._closed = False

    @property
    def actors(self) -> list[Any]:
        """Handles of the live actors."""
        return [host.actor for host in self.hosts if not host.dead]

    async def __aenter__(self) -> RayKernelPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the actors (and Ray, if needed) and wait until they run.

        Called by the first :meth:`acquire`. Waits at most ``start_timeout_s``; the actors
        that could not be placed by then stay queued in Ray (a later :meth:`acquire` may
        find them running) until :meth:`aclose`.

        Raises:
            PoolExhaustedError: the cluster could not place the actors in time; the message
                names the resources that are missing.
        """
        try:
            with anyio.fail_after(self.start_timeout_s):
                await self._wait_started()
        except TimeoutError as exc:
            raise PoolExhaustedError(self._exhausted_message(self.start_timeout_s)) from exc

    async def _wait_started(self) -> None:
        if self._closed:
            raise EnvClosedError("this RayKernelPool is closed; create a new one")
        if self._started is None:
            if not ray.is_initialized():
                # Blocks for a few seconds, once: better than a half-started pool.
                ray.init(address=self.address)
            self._started = asyncio.get_running_loop().create_task(self._start_hosts())
        # Shielded: a caller that stops waiting leaves the actors queued for the next one.
        await asyncio.shield(self._started)

    async def _start_hosts(self) -> None:
        await asyncio.gather(*(self._start_host(self._new_host()) for _ in range(self.actor_count)))

    def _new_host(self) -> RayHost:
        host = RayHost(_KernelHostActor.options(**self.actor_options).remote(self.pool_options))
        self.hosts.append(host)
        return host

    async def _start_host(self, host: RayHost) -> None:
        try:
            host.info = await host.actor.start.remote()
        except Exception as exc:  # an actor that cannot start is not replaced: it would loop
            self._start_error = f"{type(exc).__name__}: {exc}"
            self.host_lost(host, f"failed to start: {self._start_error}", replace=False)

    async def acquire(self, timeout_s: float | None = None) -> RemoteKernel:
        """Lend a ready kernel from the least busy live actor.

        Raises:
            PoolExhaustedError: no kernel became ready within ``timeout_s``.
        """
        try:
            # The placement of actors counts against the budget too: a cluster without room
            # for them would otherwise keep the caller waiting forever.
            with anyio.fail_after(timeout_s):
                await self._wait_started()
                while True:
                    host = await self._pick_host()
                    try:
                        kernel_id = await host.actor.acquire.remote(timeout_s)
                    except RayActorError as exc:
                        self.host_lost(host, _first_line(exc))
                        continue
                    host.leases += 1
                    return RemoteKernel(self, host, kernel_id)
        except TimeoutError as exc:
            if isinstance(exc, PoolExhaustedError):
                raise
            raise PoolExhaustedError(self._exhausted_message(timeout_s)) from exc

    def _exhausted_message(self, timeout_s: float | None) -> str:
        """Why no kernel came in time: actors Ray could not place (and what they lack), or none ready."""
        waiting = [host for host in self.hosts if not host.info and not host.dead]
        if not waiting:
            return (
                f"no kernel became ready on any Ray actor within {timeout_s} s; "
                "add actors, raise their pool size or the timeout"
            )
        need = actor_resources(self.actor_options)
        try:
            free = ray.available_resources()
            total = ray.cluster_resources()
        except Exception as exc:  # noqa: BLE001 - the message is still worth giving
            free, total = {}, {}
            log.warning("cannot read the Ray cluster's resources: %r", exc)
        missing = {
            name: amount for name, amount in need.items() if free.get(name, 0.0) < amount
        }
        described = ", ".join(
            f"{name}={amount:g} (free {free.get(name, 0.0):g} of {total.get(name, 0.0):g})"
            for name, amount in (missing or need).items()
        )
        what = "missing: " + described if missing else "placement still under way; needs " + described
        return (
            f"{len(waiting)} of {self.actor_count} Ray actors could not be placed within "
            f"{timeout_s} s ({what}); free those resources (close other pools or envs), add "
            "nodes, or ask for less with actor_options (e.g. num_cpus=0.5)"
        )

    async def _pick_host(self) -> RayHost:
        while True:
            if self._closed:
                raise EnvClosedError("this RayKernelPool is closed; create a new one")
            if not self.hosts:
                raise KernelStartError(f"no Ray actor could be started: {self._start_error}")
            live = [host for host in self.hosts if host.info]
            if live:
                turn = next(self._round_robin) % len(live)
                return min(live[turn:] + live[:turn], key=lambda host: host.leases)
            await asyncio.sleep(0.1)  # every actor is starting or being replaced

    def release(self, kernel: RemoteKernel) -> None:
        """Give a kernel back to its actor (in the background)."""
        self._spawn(kernel.shutdown())

    def host_lost(self, host: RayHost, reason: str, *, replace: bool = True) -> None:
        """Mark an actor dead, kill what is left of it and start a replacement."""
        if host.dead:
            return
        host.dead = True
        self.lost_hosts += 1
        log.warning("Ray actor %s lost (%s); starting a replacement", host.info, reason)
        with contextlib.suppress(Exception):
            ray.kill(host.actor)
        with contextlib.suppress(ValueError):
            self.hosts.remove(host)
        if replace and not self._closed:
            self._spawn(self._start_host(self._new_host()))

    async def counts(self) -> list[dict[str, Any]]:
        """Per live actor: its node and how many kernels are ready, starting and lent out."""
        hosts = [host for host in self.hosts if host.info]
        results = await asyncio.gather(
            *(host.actor.counts.remote() for host in hosts), return_exceptions=True
        )
        return [
            {"node_id": host.node_id, **result}
            for host, result in zip(hosts, results, strict=True)
            if isinstance(result, dict)
        ]

    async def aclose(self) -> None:
        """Stop every actor's kernels, then the actors. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            # Actors Ray never placed would keep their start (and this close) waiting forever.
            if self._started is not None:
                self._started.cancel()
                await asyncio.gather(self._started, return_exceptions=True)
            with anyio.move_on_after(30):
                await asyncio.gather(*self._tasks, return_exceptions=True)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            hosts, self.hosts = list(self.hosts), []
            # Only started actors can answer; one Ray never placed would keep this waiting.
            with anyio.move_on_after(30):
                await asyncio.gather(
                    *(host.actor.aclose.remote() for host in hosts if host.info),
                    return_exceptions=True,
                )
            for host in hosts:
                with contextlib.suppress(Exception):
                    ray.kill(host.actor)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def actor_resources(actor_options: dict[str, Any]) -> dict[str, float]:
    """The resources one actor asks Ray for, named as ``ray.available_resources()`` names them."""
    need = {"CPU": float(actor_options.get("num_cpus", 1))}
    if actor_options.get("num_gpus"):
        need["GPU"] = float(actor_options["num_gpus"])
    if actor_options.get("memory"):
        need["memory"] = float(actor_options["memory"])
    need.update({name: float(v) for name, v in (actor_options.get("resources") or {}).items()})
    return {name: amount for name, amount in need.items() if amount > 0}


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
