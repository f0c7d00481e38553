"""One running IPython kernel: start it, run a cell in it under a budget, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import queue
import shutil
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import zmq
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.session import Session

from ..errors import KernelCommunicationError, KernelStartError
from ..models import CodeObservation, ErrorInfo, StepStatus
from .outputs import DEFAULT_MAX_OUTPUT_BYTES, OutputCollector, StepDisplays, status_from_reply

log = logging.getLogger(__name__)

# How often a running step checks that the kernel process is still alive.
LIVENESS_POLL_S = 0.1


@dataclass
class StepOutcome:
    """The result of :meth:`Kernel.execute`: an observation, and whether the kernel is lost.

    ``displays`` says which display ids the step showed and sent, for an episode-wide display
    index (updates of earlier steps' outputs).
    """

    observation: CodeObservation
    kernel_lost: bool = False
    late_output: list[dict[str, Any]] = field(default_factory=list)
    displays: StepDisplays = field(default_factory=StepDisplays)


class Kernel:
    """A started, ready kernel with its client, its directory and its working directory.

    Each kernel owns ``directory`` (connection file and IPC sockets under ``run/``, the
    episode's working directory under ``work/``), removed by :meth:`shutdown`.
    """

    _counter = itertools.count(1)

    def __init__(self, manager: AsyncKernelManager, directory: Path, kernel_id: str) -> None:
        self.manager = manager
        self.client = manager.client()
        self.directory = directory
        self.kernel_id = kernel_id
        self.started_at = time.monotonic()
        self._late: list[dict[str, Any]] = []
        self._iopub_sync: zmq.Socket | None = None
        self._closed = False
        # Live forks that run inside this kernel's sandbox, and the kernel that hosts this one:
        # a host kernel is kept (its shutdown deferred) while such forks run.
        self._guests: set[Kernel] = set()
        self._host: Kernel | None = None
        self._shutdown_deferred = False

    @property
    def work_dir(self) -> Path:
        """The kernel's current directory when it started (the episode's working directory)."""
        return self.directory / "work"

    @property
    def pid(self) -> int | None:
        """The kernel process id (of the outermost launched process), if known."""
        process = getattr(self.manager.provisioner, "process", None)
        return getattr(process, "pid", None)

    # -- life cycle ---------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        *,
        root: Path,
        kernel_name: str,
        spec_manager: KernelSpecManager,
        start_timeout_s: float = 60.0,
        extra_env: dict[str, str] | None = None,
    ) -> Kernel:
        """Start a kernel under ``root`` and wait until it is ready.

        Ready means a ``kernel_info_reply`` arrived and IOPub is proven connected (ipykernel 7
        sends ``iopub_welcome``), which is tighter than ``wait_for_ready()``'s polling.
        """
        kernel_id = f"k{next(cls._counter)}-{uuid.uuid4().hex[:8]}"
        directory = Path(root) / kernel_id
        (directory / "run").mkdir(parents=True)
        (directory / "work").mkdir()
        # Each kernel gets its own IPC path: kernels started together otherwise collide.
        manager = AsyncKernelManager(
            kernel_name=kernel_name,
            kernel_spec_manager=spec_manager,
            transport="ipc",
            ip=str(directory / "run" / "kernel"),
            connection_file=str(directory / "run" / "connection.json"),
        )
        kernel = cls(manager, directory, kernel_id)

        async def launch() -> None:
            env = {**os.environ, **(extra_env or {})}
            env.pop("JPY_SESSION_NAME", None)
            await manager.start_kernel(cwd=str(directory / "work"), env=env)
            kernel.client = manager.client()

        await kernel._become_ready(launch, start_timeout_s)
        return kernel

    @classmethod
    async def adopt(
        cls, manager: AsyncKernelManager, directory: Path, kernel_id: str, timeout_s: float
    ) -> Kernel:
        """A kernel that already runs (a live fork, see :mod:`.livefork`), once it is ready."""
        kernel = cls(manager, directory, kernel_id)
        await kernel._become_ready(None, timeout_s)
        return kernel

    async def _become_ready(
        self, launch: Callable[[], Awaitable[None]] | None, timeout_s: float
    ) -> None:
        """Launch (if asked), connect and wait until ready; on any failure, clean up."""
        try:
            if launch is not None:
                await launch()
            self.client.start_channels()
            with anyio.fail_after(timeout_s):
                await self._wait_ready()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self.shutdown()
            if isinstance(exc, TimeoutError):
                raise KernelStartError(
                    f"kernel {self.kernel_id} did not become ready within {timeout_s} s"
                ) from exc
            if isinstance(exc, Exception) and not isinstance(exc, KernelStartError):
                raise KernelStartError(f"kernel {self.kernel_id} failed to start: {exc}") from exc
            raise

    async def evaluate(self, expression: str, *, timeout_s: float) -> dict[str, Any]:
        """Evaluate ``expression`` in the kernel without a trace in its history or outputs.

        Returns the ``user_expressions`` entry of the reply (``status``, ``data`` or the error).

        Raises:
            KernelCommunicationError: the kernel died, broke or did not answer in time.
        """
        run = _Run(self, OutputCollector(DEFAULT_MAX_OUTPUT_BYTES))
        self._drain_late_nowait()
        run.msg_id = self.client.execute(
            "", silent=True, store_history=False, user_expressions={"r": expression},
            allow_stdin=False,
        )
        with anyio.move_on_after(timeout_s) as budget:
            await run.wait()
        if budget.cancelled_caught or run.died or run.broken or run.reply is None:
            raise KernelCommunicationError(
                f"kernel {self.kernel_id} did not answer an evaluation "
                f"({'it died' if run.died else run.broken or 'timed out'})"
            )
        return run.reply.get("user_expressions", {}).get("r", {})

    async def _wait_ready(self) -> None:
        msg_id = self.client.kernel_info()
        got_reply = got_welcome = False
        while not (got_reply and got_welcome):
            if not await self.manager.is_alive():
                raise KernelStartError(f"kernel {self.kernel_id} died during start-up")
            if not got_reply:
                with contextlib.suppress(queue.Empty):
                    msg = await self.client.get_shell_msg(timeout=0.05)
                    got_reply = msg["parent_header"].get("msg_id") == msg_id
            if not got_welcome:
                with contextlib.suppress(queue.Empty):
                    msg = await self.client.get_iopub_msg(timeout=0.05)
                    # A busy/idle for our kernel_info also proves IOPub is connected.
                    got_welcome = msg["msg_type"] == "iopub_welcome" or (
                        msg["parent_header"].get("msg_id") == msg_id
                    )

    async def is_alive(self) -> bool:
        """Whether the kernel process is still running."""
        if self._closed:
            return False
        try:
            return await self.manager.is_alive()
        except Exception:  # a provisioner that lost its process
            return False

    def exit_code(self) -> int | None:
        """The kernel process's exit code, once it has exited."""
        provisioner = self.manager.provisioner
        process = getattr(provisioner, "process", None)
        code = process.poll() if process is not None else None
        # A wrapper (bubblewrap) reports "killed by signal N" as exit code 128 + N.
        translate = getattr(provisioner, "translate_exit_code", None)
        return translate(code) if translate is not None else code

    async def interrupt(self) -> None:
        """Send an interrupt (SIGINT, or an ``interrupt_request`` in message mode).

        Never raises: a kernel that cannot be interrupted (it already died) is escalated to
        :meth:`kill` by the caller's grace period; the failure is logged.
        """
        try:
            await self.manager.interrupt_kernel()
        except Exception as exc:  # noqa: BLE001 - survivable: the grace period escalates
            log.warning("interrupting kernel %s failed: %r", self.kernel_id, exc)

    async def kill(self) -> None:
        """Kill the kernel process at once (used when an interrupt did not stop a cell).

        Never raises: a kernel that is already gone needs no killing; the failure is logged.
        """
        try:
            await self.manager.signal_kernel(signal.SIGKILL)
        except Exception as exc:  # noqa: BLE001 - survivable: the kernel is replaced anyway
            log.warning("killing kernel %s failed: %r", self.kernel_id, exc)

    def keep_for(self, guest: Kernel) -> None:
        """Keep this kernel until ``guest`` (a fork living in its sandbox) is shut down."""
        self._guests.add(guest)
        guest._host = self

    async def shutdown(self) -> None:
        """Stop the kernel now and remove its directory. Safe to call twice.

        A kernel that hosts live forks in its sandbox is stopped when its last fork is.
        """
        if self._closed:
            return
        if self._guests:
            self._shutdown_deferred = True
            with contextlib.suppress(Exception):
                self.client.stop_channels()
            return
        self._closed = True
        host, self._host = self._host, None
        try:
            await self._stop()
        finally:
            if host is not None:
                host._guests.discard(self)
                if host._shutdown_deferred and not host._guests:
                    await host.shutdown()

    async def _stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        self._iopub_sync = None
        try:
            if self.manager.has_kernel:
                await self.manager.shutdown_kernel(now=True)
        except Exception as exc:  # never let cleanup raise; log what was left
            log.warning("shutting down kernel %s failed: %s", self.kernel_id, exc)
            with contextlib.suppress(Exception):
                await self.manager.signal_kernel(signal.SIGKILL)
        # Each manager made its own zmq context (shared with its client): close it now rather
        # than leave it to garbage collection, which warns about it at an arbitrary moment.
        with contextlib.suppress(Exception):
            self.manager.context.destroy(linger=0)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- running code -------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        *,
        timeout_s: float,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        interrupt_grace_s: float = 1.0,
        silent: bool = False,
    ) -> StepOutcome:
        """Run ``code`` and collect its outputs into an observation.

        A step is done when both the shell ``execute_reply`` and the IOPub ``idle`` for our
        request have arrived; they are read concurrently because they come in either order.
        Past ``timeout_s`` the kernel is interrupted; if it has not finished
        ``interrupt_grace_s`` later (code that ignores SIGINT, or is stuck in C), it is killed
        and the outcome says the kernel is lost.
        """
        started = time.perf_counter()
        collector = OutputCollector(max_output_bytes)
        run = _Run(self, collector)
        self._drain_late_nowait()
        msg_id = self.client.execute(
            code, silent=silent, store_history=not silent, allow_stdin=False, stop_on_error=False
        )
        run.msg_id = msg_id
        with anyio.move_on_after(timeout_s) as budget:
            await run.wait()
        timed_out = budget.cancelled_caught
        interrupted_in_time = False
        if timed_out:
            await self.interrupt()
            with anyio.move_on_after(interrupt_grace_s) as grace:
                await run.wait()
            interrupted_in_time = not grace.cancelled_caught and run.finished
        else:
            run.drain_nowait()
        duration = time.perf_counter() - started

        late = self._take_late()
        displays = collector.displays
        if run.died:
            return StepOutcome(self._died_observation(collector, duration), True, late, displays)
        if run.broken is not None:
            await self.kill()
            observation = self._broken_observation(collector, duration, run.broken)
            return StepOutcome(observation, True, late, displays)
        if timed_out:
            if not interrupted_in_time:
                await self.kill()
            error = ErrorInfo(
                ename="TimeoutError",
                evalue=(
                    f"The step exceeded its {timeout_s:g} s budget and was interrupted."
                    if interrupted_in_time
                    else f"The step exceeded its {timeout_s:g} s budget and did not stop on "
                    "interrupt; the kernel was replaced and the episode's variables are lost."
                ),
            )
            observation = collector.to_observation(
                StepStatus.TIMEOUT, reply=run.reply, error=error, duration_s=duration
            )
            observation.metadata["kernel_replaced"] = not interrupted_in_time
            return StepOutcome(observation, not interrupted_in_time, late, displays)
        observation = collector.to_observation(
            status_from_reply(run.reply or {}), reply=run.reply, duration_s=duration
        )
        return StepOutcome(observation, False, late, displays)

    def _died_observation(self, collector: OutputCollector, duration: float) -> CodeObservation:
        code = self.exit_code()
        how = f" (exit code {code})" if code is not None else ""
        if code is not None and code < 0:
            how = f" (killed by signal {signal.Signals(-code).name})"
        error = ErrorInfo(
            ename="KernelDied",
            evalue=f"The kernel process died{how} while running this cell. The episode's "
            "variables are lost; the next step runs on a fresh kernel.",
        )
        observation = collector.to_observation(
            StepStatus.KERNEL_DIED, error=error, duration_s=duration
        )
        observation.metadata["kernel_exit_code"] = code
        return observation

    def _broken_observation(
        self, collector: OutputCollector, duration: float, reason: str
    ) -> CodeObservation:
        error = ErrorInfo(
            ename="KernelProtocolError",
            evalue="The kernel sent a message that could not be read "
            f"({reason}): the cell probably replaced something the kernel's own messaging "
            "uses (such as json.dumps). The kernel was stopped; the episode's variables are "
            "lost and the next step runs on a fresh kernel.",
        )
        return collector.to_observation(StepStatus.KERNEL_DIED, error=error, duration_s=duration)

    # Output written after a cell's idle (by background threads) cannot be attributed
    # reliably; it is kept apart and reported with the next step as ``late_output``.
    def _drain_late_nowait(self) -> None:
        while True:
            try:
                msg = self.recv_iopub_nowait()
                if msg is None:
                    return
                self._note_late(msg)
            except Exception as exc:  # unreadable leftovers of a previous cell: drop them
                log.warning("kernel %s: dropped an unreadable message: %s", self.kernel_id, exc)

    def recv_iopub_nowait(self) -> dict[str, Any] | None:
        """The next IOPub message if one is already queued, else None (never waits)."""
        if self._iopub_sync is None:
            # A blocking twin of the asyncio socket: a non-blocking read needs no event loop
            # round trip. Used only while no asyncio read is pending on the same socket.
            self._iopub_sync = zmq.Socket.shadow(self.client.iopub_channel.socket.underlying)
        try:
            parts = self._iopub_sync.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            return None
        return decode_message(self.client.session, parts)

    def _note_late(self, msg: dict[str, Any]) -> None:
        if msg["msg_type"] in ("stream", "display_data", "error"):
            self._late.append(
                {
                    "msg_type": msg["msg_type"],
                    "parent_msg_id": msg["parent_header"].get("msg_id"),
                    "content": msg["content"],
                }
            )

    def _take_late(self) -> list[dict[str, Any]]:
        late, self._late = self._late, []
        return late


def decode_message(session: Session, frames: list[bytes]) -> dict[str, Any]:
    """A received multipart message as a message dict, its signature checked.

    Does what ``Session.deserialize`` does (signature, replay check, JSON) except turning
    every timestamp in the headers into a ``datetime``: nothing here reads them, and that
    parsing was most of the decoding cost (about 0.35 ms of 0.44 ms a message).

    Raises:
        ValueError: the message is unsigned, replayed, or its signature is wrong.
    """
    _, frames = session.feed_identities(frames)
    if len(frames) < 5:
        raise ValueError(f"malformed message: {len(frames)} frames after the delimiter")
    signature, header, parent_header, metadata, content = frames[:5]
    if session.auth is not None:
        if not signature:
            raise ValueError("unsigned message")
        if signature in session.digest_history:
            raise ValueError(f"duplicate signature: {signature!r}")
        session._add_digest(signature)  # the replay history Session.deserialize keeps
        if not hmac.compare_digest(signature, session.sign(frames[1:5])):
            raise ValueError(f"invalid signature: {signature!r}")
    header = session.unpack(header)
    return {
        "header": header,
        "msg_id": header["msg_id"],
        "msg_type": header["msg_type"],
        "parent_header": session.unpack(parent_header),
        "metadata": session.unpack(metadata),
        "content": session.unpack(content),
        "buffers": [memoryview(b) for b in frames[5:]],
    }


class _Run:
    """The state of one execute request while its reply and idle are awaited."""

    def __init__(self, kernel: Kernel, collector: OutputCollector) -> None:
        self.kernel = kernel
        self.collector = collector
        self.msg_id = ""
        self.reply: dict[str, Any] | None = None
        self.idle = False
        self.died = False
        # Why a message could not be read, once one could not (agent code broke the
        # kernel's messaging): the step cannot finish normally.
        self.broken: str | None = None

    @property
    def finished(self) -> bool:
        return self.reply is not None and self.idle

    async def wait(self) -> None:
        """Read shell and IOPub concurrently until both signals are in (or the kernel dies).

        Awaits the two sockets' receive futures directly (no tasks per step: this is the hot
        path); the wait's timeout doubles as the liveness check interval.
        """
        client = self.kernel.client
        shell_socket = client.shell_channel.socket
        iopub_socket = client.iopub_channel.socket
        shell: asyncio.Future | None = None
        iopub: asyncio.Future | None = None
        try:
            while not self.finished and self.broken is None:
                if self.reply is None and shell is None:
                    shell = shell_socket.recv_multipart()
                if not self.idle and iopub is None:
                    iopub = iopub_socket.recv_multipart()
                waiting = [f for f in (shell, iopub) if f is not None]
                done, _ = await asyncio.wait(
                    waiting, timeout=LIVENESS_POLL_S, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    if not await self.kernel.is_alive():
                        self.died = True
                        return
                    continue
                if shell in done:
                    shell, frames = None, shell.result()
                    self._take_shell(frames)
                if iopub in done:
                    iopub, frames = None, iopub.result()
                    self._take_iopub(frames)
        finally:
            # On cancellation (the step's budget ran out) keep any message already received.
            for future, take in ((shell, self._take_shell), (iopub, self._take_iopub)):
                if future is None:
                    continue
                if future.done() and not future.cancelled() and future.exception() is None:
                    take(future.result())
                else:
                    future.cancel()

    def _decode(self, frames: list[bytes]) -> dict[str, Any]:
        return decode_message(self.kernel.client.session, frames)

    def _take_shell(self, frames: list[bytes]) -> None:
        try:
            msg = self._decode(frames)
            if msg["parent_header"].get("msg_id") == self.msg_id:
                self.reply = dict(msg["content"])
        except Exception as exc:
            self.broken = f"{type(exc).__name__}: {exc}"

    def _take_iopub(self, frames: list[bytes]) -> None:
        try:
            self._take(self._decode(frames))
        except Exception as exc:
            self.broken = f"{type(exc).__name__}: {exc}"

    def _take(self, msg: dict[str, Any]) -> None:
        if msg["parent_header"].get("msg_id") != self.msg_id:
            self.kernel._note_late(msg)
        elif msg["msg_type"] == "status":
            if msg["content"].get("execution_state") == "idle":
                self.idle = True
        else:
            self.collector.feed(msg)

    def drain_nowait(self) -> None:
        """Take IOPub messages that are already queued, without waiting."""
        while self.broken is None:
            try:
                msg = self.kernel.recv_iopub_nowait()
                if msg is None:
                    return
                self._take(msg)
            except Exception as exc:
                self.broken = f"{type(exc).__name__}: {exc}"

