"""One running IPython kernel: start it, run a cell in it under a budget, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
from ..sandbox.episode_fs import EpisodeFS, episode_fs_problem
from ..sandbox.host_paths import OwnedFolder
from .guard_host import GuardHost, HostedGuard
from .limits import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ConnectionWatch,
    LateBacklog,
    bounded_context,
    lost_marker,
)
from .outputs import DEFAULT_MAX_OUTPUT_BYTES, OutputCollector, StepDisplays, status_from_reply
from .sizes import held_bytes
from .streaming import OutputSink, OutputStreamer

log = logging.getLogger(__name__)

# How often a running step checks that the kernel process is still alive.
LIVENESS_POLL_S = 0.1
# How long an interrupt is given before it is sent again (see _interrupt_once_started).
INTERRUPT_AGAIN_S = 1.0
# Why a step could not finish when the kernel's frame guard host ended (see _Run.broken).
RELAY_LOST = "the frame guard host ended"
# How long after its reply a step waits for its IOPub idle before it probes for it: the idle
# can be dropped (a kernel flooding IOPub past its queue), and the probe's own idle, which
# the kernel publishes after everything of the cell, tells that nothing more will come.
IDLE_OVERDUE_S = 1.0
# How long a step start waits for a reconnected IOPub to be subscribed again.
RESUBSCRIBE_TIMEOUT_S = 5.0
# Messages read from IOPub before a step starts at most (the rest is read during the step).
MAX_DRAIN_MESSAGES = 1000


@dataclass
class StepOutcome:
    """The result of :meth:`Kernel.execute`: an observation, and whether the kernel is lost.

    ``displays`` says which display ids the step showed and sent, for an episode-wide display
    index (updates of earlier steps' outputs).
    """

    observation: CodeObservation
    kernel_lost: bool = False
    late_output: list[dict[str, Any]] = field(default_factory=list)
    # Bytes of late output dropped past its limit (a marker item in late_output says so too).
    late_output_dropped_bytes: int = 0
    displays: StepDisplays = field(default_factory=StepDisplays)


class Kernel:
    """A started, ready kernel with its client, its directory and its working directory.

    Each kernel owns ``directory`` (connection file and IPC sockets under ``run/``, the
    episode's working directory in ``work``, or in ``fs/work`` when the episode has a
    byte budget: a tmpfs also holding its /tmp and /dev/shm), removed by :meth:`shutdown`.
    """

    _counter = itertools.count(1)

    def __init__(
        self,
        manager: AsyncKernelManager,
        directory: Path,
        kernel_id: str,
        fs: EpisodeFS | None = None,
        guards: GuardHost | None = None,
    ) -> None:
        self.manager = manager
        # The manager's context: a client left to make its own would, even when only
        # garbage-collected (jupyter_client builds it on first access).
        self.client = manager.client(context=manager.context)
        self.directory = directory
        self.kernel_id = kernel_id
        self.fs = fs
        self.started_at = time.monotonic()
        self.max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
        self._late = LateBacklog(DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_MESSAGE_BYTES)
        self._watch: ConnectionWatch | None = None
        self._guard: HostedGuard | None = None
        # What runs its frame guard (its pool's), out of this process.
        self.guards = guards
        self.folder: OwnedFolder | None = None  # a live fork's directory, removed through it
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
        return self.fs.work if self.fs is not None else self.directory / "work"

    @property
    def run_dir(self) -> Path:
        """The kernel's socket folder (its connection file, IPC sockets, the tool bridge's)."""
        return Path(self.manager.connection_file).parent

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
        guards: GuardHost,
        kernel_name: str,
        spec_manager: KernelSpecManager,
        start_timeout_s: float = 60.0,
        extra_env: dict[str, str] | None = None,
        disk_budget_bytes: int | None = None,
        disk_inodes: int = 65536,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        abstract_ipc: bool = False,
    ) -> Kernel:
        """Start a kernel under ``root`` and wait until it is ready.

        Ready means a ``kernel_info_reply`` arrived and IOPub is proven connected (ipykernel 7
        sends ``iopub_welcome``), which is tighter than ``wait_for_ready()``'s polling.

        With ``disk_budget_bytes``, the working directory, /tmp and /dev/shm of a sandboxed
        kernel share one tmpfs of that size (and ``disk_inodes`` files), where this process may
        mount one (a warning is logged once where it may not).

        A message part larger than ``max_message_bytes`` from the kernel is dropped unread
        (see :mod:`kernelenv.runtime.limits`).

        ``abstract_ipc``: its sockets in the abstract Unix namespace (see :func:`ipc_endpoint`),
        where Landlock keeps other kernels from connecting; else in its ``run`` folder.
        """
        kernel_id = f"k{next(cls._counter)}-{uuid.uuid4().hex[:8]}"
        directory = Path(root) / kernel_id
        directory.mkdir(parents=True)
        fs = None
        if disk_budget_bytes is not None and episode_fs_problem() is None:
            try:
                fs = EpisodeFS(directory / "fs", disk_budget_bytes, disk_inodes).create()
            except OSError as exc:
                shutil.rmtree(directory, ignore_errors=True)
                raise KernelStartError(f"kernel {kernel_id}: no byte budget: {exc}") from exc
        elif disk_budget_bytes is not None:
            _warn_no_episode_fs()
        if fs is None:
            (directory / "work").mkdir()
        # Its socket folder, writable by the kernel: inside its byte budget when it has one
        # (else whatever it wrote there went to the host's disk unbounded). The kernel may
        # rename it there: see _stop. A short name there: IPC paths must fit in 107 bytes,
        # and the budget's folder already adds three.
        run_dir = fs.root / "r" if fs is not None else directory / "run"
        run_dir.mkdir()
        # "-N": jupyter_client numbers a kernel's IPC sockets from 1 (five of them).
        endpoint = ipc_endpoint(run_dir, kernel_id, abstract=False)
        if len(os.fsencode(endpoint)) + 2 > MAX_IPC_PATH_BYTES:
            if fs is not None:
                fs.close()
            shutil.rmtree(directory, ignore_errors=True)
            raise KernelStartError(
                f"kernel {kernel_id}: its IPC socket paths in {run_dir} would be longer than "
                f"a Unix socket allows ({MAX_IPC_PATH_BYTES} bytes): give the pool a shorter "
                "root_dir"
            )
        # Each kernel gets its own IPC path: kernels started together otherwise collide.
        manager = AsyncKernelManager(
            kernel_name=kernel_name,
            kernel_spec_manager=spec_manager,
            transport="ipc",
            ip=ipc_endpoint(run_dir, kernel_id, abstract=abstract_ipc),
            connection_file=str(run_dir / "connection.json"),
            context=bounded_context(max_message_bytes),
        )
        kernel = cls(manager, directory, kernel_id, fs, guards=guards)
        kernel.max_message_bytes = max_message_bytes

        async def launch() -> None:
            env = {**os.environ, **(extra_env or {})}
            env.pop("JPY_SESSION_NAME", None)
            await manager.start_kernel(cwd=str(kernel.work_dir), env=env)

        await kernel._become_ready(launch, start_timeout_s)
        return kernel

    @classmethod
    async def adopt(
        cls,
        manager: AsyncKernelManager,
        directory: Path,
        kernel_id: str,
        timeout_s: float,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        guards: GuardHost | None = None,
        folder: OwnedFolder | None = None,
    ) -> Kernel:
        """A kernel that already runs (a live fork, see :mod:`.livefork`), once it is ready;
        ``folder``, its directory's handle, removes it at the end (else by path)."""
        kernel = cls(manager, directory, kernel_id, guards=guards)
        kernel.folder = folder
        kernel.max_message_bytes = max_message_bytes
        await kernel._become_ready(None, timeout_s)
        return kernel

    async def _become_ready(
        self, launch: Callable[[], Awaitable[None]] | None, timeout_s: float
    ) -> None:
        """Launch (if asked), connect and wait until ready; on any failure, clean up."""
        try:
            if launch is not None:
                await launch()
            await self._connect(self.max_message_bytes)
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
        await self._drain_late()
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

    async def _connect(self, max_message_bytes: int) -> None:
        """Open the client's channels, bounded as :mod:`kernelenv.runtime.limits` says,
        through a frame guard (run by the pool's :class:`GuardHost`) that bounds each message
        as a whole."""
        self.max_message_bytes = self._late.max_message_bytes = max_message_bytes
        # Shared, bounded (see bounded_context); no heartbeat channel: liveness is the
        # process's (is_alive), and a heartbeat costs a thread and an event loop a kernel.
        self.client = self.manager.client(context=bounded_context(max_message_bytes))
        manager = self.manager
        if manager.transport == "ipc":
            if self.guards is None:
                raise KernelStartError(f"kernel {self.kernel_id}: no frame guard host")
            self._guard = await self.guards.open(
                manager.ip, manager.get_connection_info(), max_message_bytes
            )
            guarded = self.client.ip = self._guard.prefix
            # The manager's own control socket (interrupts by message, shutdown requests),
            # connected straight to the kernel at its start: through the guard as well.
            kernel_ip, manager.ip = manager.ip, guarded
            try:
                manager._close_control_socket()
                manager._connect_control_socket()
            finally:
                manager.ip = kernel_ip
        # No stdin channel either: every request says allow_stdin=False.
        self.client.start_channels(hb=False, stdin=False)
        self._watch = ConnectionWatch(self.client)

    async def _wait_ready(self) -> None:
        msg_id = self.client.kernel_info()
        got_reply = got_welcome = False
        while not (got_reply and got_welcome):
            if not await self.manager.is_alive():
                raise KernelStartError(
                    f"kernel {self.kernel_id} died during start-up "
                    f"(exit code {self.exit_code()})"
                )
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

    @property
    def relay_lost(self) -> bool:
        """Whether the process relaying this kernel's channels (its guard host) ended."""
        return self._guard is not None and not self._guard.alive

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

    @property
    def hosting_forks(self) -> bool:
        """Whether live forks in its sandbox keep it running (see :meth:`keep_for`)."""
        return bool(self._guests) and not self._closed

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
            self._stop_channels()
            return
        self._closed = True
        host, self._host = self._host, None
        try:
            # Cleanup runs to its end, also in a cancelled scope: else a cancel at its first
            # wait leaves the process, its relay's sockets and its folder behind.
            with anyio.CancelScope(shield=True):
                await self._stop()
        finally:
            if host is not None:
                host._guests.discard(self)
                if host._shutdown_deferred and not host._guests:
                    await host.shutdown()

    def _stop_channels(self) -> None:
        if self._watch is not None:
            with contextlib.suppress(Exception):
                self._watch.close()
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        self._iopub_sync = None

    async def _close_guard(self) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            await guard.aclose()

    async def _stop(self) -> None:
        self._stop_channels()
        # The budget is detached first: the socket folder in it is the kernel's to rename,
        # and jupyter_client removes the connection file and IPC sockets by path, which a
        # link put in the folder's place would lead anywhere on the host.
        self._detach_fs()
        try:
            if self.manager.has_kernel:
                await self.manager.shutdown_kernel(now=True)
        except Exception as exc:  # never let cleanup raise; log what was left
            log.warning("shutting down kernel %s failed: %s", self.kernel_id, exc)
            with contextlib.suppress(Exception):
                await self.manager.signal_kernel(signal.SIGKILL)
        # A manager given no context made its own: close it now rather than leave it to
        # garbage collection, which warns about it at an arbitrary moment. The shared one
        # (bounded_context) stays: the client's sockets on it are closed by now.
        if getattr(self.manager, "_created_context", False):
            with contextlib.suppress(Exception):
                self.manager.context.destroy(linger=0)
        await self._close_guard()
        if self.folder is not None:
            self.folder.remove()
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _detach_fs(self) -> None:
        if self.fs is not None:  # also before rmtree, which cannot remove a mount point
            try:
                self.fs.close()
            except OSError as exc:
                log.warning("kernel %s: could not detach its files: %s", self.kernel_id, exc)

    # -- running code -------------------------------------------------------------------

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
        """Run ``code`` and collect its outputs into an observation.

        A step is done when both the shell ``execute_reply`` and the IOPub ``idle`` for our
        request have arrived; they are read concurrently because they come in either order.
        Past ``timeout_s`` the kernel is interrupted; if it has not finished
        ``interrupt_grace_s`` later (code that ignores SIGINT, or is stuck in C), it is killed
        and the outcome says the kernel is lost. ``on_output`` gets the cell's outputs as
        they arrive (see :mod:`kernelenv.runtime.streaming`); it must not block.
        """
        started = time.perf_counter()
        collector = OutputCollector(max_output_bytes)
        streamer = OutputStreamer(on_output, max_output_bytes) if on_output is not None else None
        run = _Run(self, collector, streamer)
        self._late.limit_bytes = max_output_bytes
        await self._drain_late()
        msg_id = self.client.execute(
            code, silent=silent, store_history=not silent, allow_stdin=False, stop_on_error=False
        )
        run.msg_id = msg_id
        with anyio.move_on_after(timeout_s) as budget:
            await run.wait()
        timed_out = budget.cancelled_caught
        interrupted_in_time = False
        if timed_out:
            with anyio.move_on_after(interrupt_grace_s) as grace:
                await self._interrupt_once_started(run)
                await run.wait()
            interrupted_in_time = not grace.cancelled_caught and run.finished
        else:
            run.drain_nowait()
        duration = time.perf_counter() - started
        outcome = await self._outcome(run, collector, duration, timed_out, interrupted_in_time,
                                      timeout_s)
        if run.output_lost and not run.died and run.broken != RELAY_LOST:
            _report_lost(outcome.observation, self.max_message_bytes)
        late, dropped, lost = self._late.take()
        outcome.late_output, outcome.late_output_dropped_bytes = late, dropped
        if dropped:
            outcome.observation.metadata["late_output_dropped_bytes"] = dropped
        if lost:
            outcome.observation.metadata["late_output_lost"] = True
        if dropped or lost:
            outcome.observation.output_truncated = True
        outcome.displays = collector.displays
        return outcome

    async def _interrupt_once_started(self, run: _Run) -> None:
        """Interrupt the cell, but not before the kernel said it started it: an idle
        ipykernel ignores SIGINT, so an interrupt that beats the cell would be lost (and the
        cell killed with its kernel once the grace ran out)."""
        while not run.started and not (
            run.finished or run.died or run.broken is not None or run.iopub_lost
        ):
            with anyio.move_on_after(LIVENESS_POLL_S):
                await run.wait()
        # "busy" goes out before the cell's code runs: an interrupt landing in between is
        # lost in ipykernel's own handling (seen under load), so it is sent again while the
        # cell runs on, until it ends or the grace does (as a user presses it again).
        while not (run.finished or run.died or run.broken is not None):
            await self.interrupt()
            with anyio.move_on_after(INTERRUPT_AGAIN_S):
                await run.wait()

    async def _outcome(
        self,
        run: _Run,
        collector: OutputCollector,
        duration: float,
        timed_out: bool,
        interrupted_in_time: bool,
        timeout_s: float,
    ) -> StepOutcome:
        if run.died:
            return StepOutcome(self._died_observation(collector, duration), True)
        if run.broken is not None:
            await self.kill()
            if run.broken == RELAY_LOST:
                return StepOutcome(self._relay_lost_observation(collector, duration), True)
            return StepOutcome(self._broken_observation(collector, duration, run.broken), True)
        if timed_out:
            if not interrupted_in_time:
                await self.kill()
            if not run.started:
                # The kernel never took this cell up: its main thread was still in an earlier
                # cell, whose end it had announced (a reply forged by that cell's code: the
                # host cannot tell it from a real one) or never reached.
                evalue = (
                    f"The kernel did not start this step within its {timeout_s:g} s budget: it "
                    "was still running an earlier cell (one whose reply came before it ended, "
                    "which agent code can forge). The kernel was replaced and the episode's "
                    "variables are lost."
                )
            elif interrupted_in_time:
                evalue = f"The step exceeded its {timeout_s:g} s budget and was interrupted."
            else:
                evalue = (
                    f"The step exceeded its {timeout_s:g} s budget and did not stop on "
                    "interrupt; the kernel was replaced and the episode's variables are lost."
                )
            error = ErrorInfo(ename="TimeoutError", evalue=evalue)
            observation = collector.to_observation(
                StepStatus.TIMEOUT, reply=run.reply, error=error, duration_s=duration
            )
            observation.metadata["kernel_replaced"] = not interrupted_in_time
            if not run.started:
                observation.metadata["earlier_cell_ran_on"] = True
            return StepOutcome(observation, not interrupted_in_time)
        error = None
        if run.reply is None:  # the shell connection dropped the reply (too large)
            error = ErrorInfo(
                ename="OutputLost",
                evalue=f"The kernel's reply was larger than {self.max_message_bytes} bytes "
                "and was dropped, so whether the cell succeeded is unknown.",
            )
        observation = collector.to_observation(
            status_from_reply(run.reply or {}), reply=run.reply, error=error, duration_s=duration
        )
        return StepOutcome(observation, False)

    def _died_observation(self, collector: OutputCollector, duration: float) -> CodeObservation:
        code = self.exit_code()
        how = f" (exit code {code})" if code is not None else ""
        if code is not None and code < 0:
            how = f" (killed by signal {signal.Signals(-code).name})"
        oom_killed = getattr(self.manager.provisioner, "oom_killed", lambda: False)()
        if oom_killed:
            how = (
                " (killed: out of memory; the episode's memory limit counts every process and "
                "its files in the working directory, /tmp and /dev/shm)"
            )
        error = ErrorInfo(
            ename="KernelDied",
            evalue=f"The kernel process died{how} while running this cell. The episode's "
            "variables are lost; the next step runs on a fresh kernel.",
        )
        observation = collector.to_observation(
            StepStatus.KERNEL_DIED, error=error, duration_s=duration
        )
        observation.metadata["kernel_exit_code"] = code
        if oom_killed:
            observation.metadata["out_of_memory"] = True
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

    def _relay_lost_observation(
        self, collector: OutputCollector, duration: float
    ) -> CodeObservation:
        error = ErrorInfo(
            ename="KernelConnectionLost",
            evalue="The relay between the kernel and this process (its frame guard host) "
            "ended while this cell ran, so its outcome is unknown. The kernel was stopped; "
            "the episode's variables are lost and the next step runs on a fresh kernel.",
        )
        return collector.to_observation(StepStatus.KERNEL_DIED, error=error, duration_s=duration)

    # Output written after a cell's idle (by background threads) cannot be attributed
    # reliably; it is kept apart (bounded, see LateBacklog) and reported with the next step
    # as ``late_output``.
    async def _drain_late(self) -> None:
        """Read what IOPub queued since the last step; after a dropped connection, wait until
        IOPub is subscribed again, so that the next cell's first outputs are not lost."""
        resubscribe_by: float | None = None
        if self.relay_lost:  # nothing comes through; the step says so
            return
        for _ in range(MAX_DRAIN_MESSAGES):
            if "iopub" in self.poll_connections():
                self._late.note_lost()
                resubscribe_by = time.monotonic() + RESUBSCRIBE_TIMEOUT_S
            try:
                frames = self._recv_iopub_frames_nowait()
            except zmq.ZMQError:
                frames = None
            if frames is None:
                if resubscribe_by is None or time.monotonic() > resubscribe_by:
                    return
                if not await self.is_alive():  # a dead kernel drops its connections too
                    return
                await anyio.sleep(LIVENESS_POLL_S / 10)
                continue
            try:
                msg_type = self.receive_late(frames)
            except Exception as exc:  # unreadable leftovers of a previous cell: drop them
                log.warning("kernel %s: dropped an unreadable message: %s", self.kernel_id, exc)
                continue
            if msg_type == "iopub_welcome":
                resubscribe_by = None

    def poll_connections(self) -> list[str]:
        """Channels whose connection libzmq dropped since the last poll, now replaced by new
        sockets. No read may be pending on them (see :class:`ConnectionWatch`)."""
        lost = self._watch.lost() if self._watch is not None else []
        if lost:
            assert self._watch is not None
            self._iopub_sync = None
            self._watch.reconnect(lost)
        return lost

    def _recv_iopub_frames_nowait(self) -> list[bytes] | None:
        if self._iopub_sync is None:
            # A blocking twin of the asyncio socket: a non-blocking read needs no event loop
            # round trip. Used only while no asyncio read is pending on the same socket.
            self._iopub_sync = zmq.Socket.shadow(self.client.iopub_channel.socket.underlying)
        try:
            return self._iopub_sync.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return None

    def receive_late(self, frames: list[bytes]) -> str:
        """Keep an IOPub message that is not of the running cell in the late backlog.

        A message that cannot fit is dropped unread (counted), so a flood costs no decoding.
        Returns the message's type.
        """
        size = sum(len(frame) for frame in frames)
        if not self._late.fits(size):
            msg_type = peek_msg_type(self.client.session, frames)
            self._late.drop(msg_type, size)
            return msg_type
        msg = decode_message(self.client.session, frames)
        self._late.add(msg, max(size, held_bytes(msg["content"])))  # decoded, it may hold more
        return msg["msg_type"]


# sizeof(sockaddr_un.sun_path) - 1 on Linux: the longest path a Unix socket can bind.
MAX_IPC_PATH_BYTES = 107


def ipc_endpoint(run_dir: Path, kernel_id: str, *, abstract: bool) -> str:
    """The ``ip`` of a kernel's IPC sockets (``{ip}-{port}``): in its ``run_dir``, or with
    ``abstract`` in the abstract Unix namespace (``@...``, no file at all).

    Landlock does not cover ``connect()`` on a socket file: at level ``limits`` a kernel could
    subscribe to another kernel's IOPub through its path. Abstract sockets it does cover
    (scoped, ABI 6): a kernel cannot connect to one made outside its own sandbox. Not under
    bubblewrap: the abstract namespace belongs to the network namespace, which the host does
    not share with the kernel there.
    """
    if abstract:
        return f"@kernelenv-{kernel_id}-{uuid.uuid4().hex[:12]}"
    return str(run_dir / "kernel")


def peek_msg_type(session: Session, frames: list[bytes]) -> str:
    """The type of a received message, read from its header alone (signature not checked)."""
    _, frames = session.feed_identities(frames)
    return str(session.unpack(frames[1]).get("msg_type", ""))


def _report_lost(observation: CodeObservation, max_message_bytes: int) -> None:
    """Say in the observation that a message of the step was dropped."""
    marker = lost_marker(max_message_bytes)
    observation.outputs.append({"output_type": "stream", "name": "stderr", "text": marker})
    observation.stderr += marker
    observation.output_truncated = True
    observation.metadata["output_lost"] = True


@functools.cache
def _warn_no_episode_fs() -> None:
    log.warning(
        "episodes get no byte budget here (%s): their working directories are not capped, "
        "only a sandbox's /tmp and /dev/shm are",
        episode_fs_problem(),
    )


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

    def __init__(
        self, kernel: Kernel, collector: OutputCollector, streamer: OutputStreamer | None = None
    ) -> None:
        self.kernel = kernel
        self.collector = collector
        self.streamer = streamer
        self.msg_id = ""
        self.reply: dict[str, Any] | None = None
        self.replied_at: float | None = None
        self.idle = False
        # The kernel said "busy" for this request: the cell has started (or is about to).
        self.started = False
        self.died = False
        # Why a message could not be read, once one could not (agent code broke the
        # kernel's messaging): the step cannot finish normally.
        self.broken: str | None = None
        # libzmq dropped a message of this step (too large, see runtime.limits), or the idle
        # never came: output may be missing, and the observation says so.
        self.shell_lost = False
        self.iopub_lost = False
        self.probes: set[str] = set()
        self.probed_at: float | None = None
        self.probe_answered = False

    @property
    def finished(self) -> bool:
        replied = self.reply is not None or self.shell_lost
        return replied and (self.idle or self.probe_answered)

    @property
    def output_lost(self) -> bool:
        return self.shell_lost or self.iopub_lost or (self.probe_answered and not self.idle)

    async def wait(self) -> None:
        """Read shell and IOPub concurrently until both signals are in (or the kernel dies).

        Awaits the two sockets' receive futures directly (no tasks per step: this is the hot
        path); the wait's timeout doubles as the liveness check interval.
        """
        client = self.kernel.client
        shell: asyncio.Future | None = None
        iopub: asyncio.Future | None = None
        try:
            while not self.finished and self.broken is None:
                # The sockets are looked up each time: a lost connection replaces them.
                if self.reply is None and shell is None:
                    shell = client.shell_channel.socket.recv_multipart()
                if not self.idle and iopub is None:
                    iopub = client.iopub_channel.socket.recv_multipart()
                waiting = [f for f in (shell, iopub) if f is not None]
                done, _ = await asyncio.wait(
                    waiting, timeout=LIVENESS_POLL_S, return_when=asyncio.FIRST_COMPLETED
                )
                if shell in done:
                    shell, frames = None, shell.result()
                    self._take_shell(frames)
                if iopub in done:
                    iopub, frames = None, iopub.result()
                    self._take_iopub(frames)
                if self.kernel._watch is not None and self.kernel._watch.lost():
                    # The sockets are about to be replaced: no read may stay pending on them.
                    self._settle(shell, self._take_shell)
                    self._settle(iopub, self._take_iopub)
                    shell = iopub = None
                    self._check_connections()
                if not done and not await self.kernel.is_alive():
                    self.died = True
                    return
                if not done and self.kernel.relay_lost:
                    self.broken = RELAY_LOST
                    return
                self._probe_if_idle_overdue()
        finally:
            # On cancellation (the step's budget ran out) keep any message already received.
            self._settle(shell, self._take_shell)
            self._settle(iopub, self._take_iopub)

    @staticmethod
    def _settle(future: asyncio.Future | None, take: Any) -> None:
        """Take the message of a finished read, or cancel a pending one."""
        if future is None:
            return
        if future.done() and not future.cancelled() and future.exception() is None:
            take(future.result())
        else:
            future.cancel()

    def _check_connections(self) -> None:
        for channel in self.kernel.poll_connections():
            if channel == "iopub":
                self.iopub_lost = True
            elif channel == "shell":
                self.shell_lost = True

    def _probe_if_idle_overdue(self) -> None:
        """Once the reply is in but the idle is not, ask for a kernel_info: its own status
        messages come after everything the cell published, so they end the wait."""
        if self.idle or self.probe_answered or (self.reply is None and not self.shell_lost):
            return
        now = time.monotonic()
        if self.replied_at is None:
            self.replied_at = now
        overdue = self.iopub_lost or self.shell_lost or now - self.replied_at > IDLE_OVERDUE_S
        # Probes sent before a reconnected IOPub is subscribed again are lost: repeat them.
        if overdue and (self.probed_at is None or now - self.probed_at >= LIVENESS_POLL_S):
            self.probes.add(self.kernel.client.kernel_info())
            self.probed_at = now

    def _decode(self, frames: list[bytes]) -> dict[str, Any]:
        return decode_message(self.kernel.client.session, frames)

    def _take_shell(self, frames: list[bytes]) -> None:
        try:
            msg = self._decode(frames)
            if msg["parent_header"].get("msg_id") == self.msg_id:
                self.reply = dict(msg["content"])
                self.replied_at = time.monotonic()
        except Exception as exc:
            self.broken = f"{type(exc).__name__}: {exc}"

    def _take_iopub(self, frames: list[bytes]) -> None:
        try:
            # Past the late backlog's room, a message that is not ours (probably another
            # cell's flood) is judged by its parent alone and dropped unread.
            session = self.kernel.client.session
            if not self.kernel._late.fits(sum(len(frame) for frame in frames)) and (
                _parent_msg_id(session, frames) not in (self.msg_id, *self.probes)
            ):
                self.kernel.receive_late(frames)
                return
            self._take(self._decode(frames), frames)
        except Exception as exc:
            self.broken = f"{type(exc).__name__}: {exc}"

    def _take(self, msg: dict[str, Any], frames: list[bytes]) -> None:
        parent = msg["parent_header"].get("msg_id")
        if parent in self.probes:
            if msg["msg_type"] == "status":
                self.probe_answered = True
        elif parent != self.msg_id:
            self.kernel._late.add(msg, sum(len(frame) for frame in frames))
        elif msg["msg_type"] == "status":
            state = msg["content"].get("execution_state")
            if state == "idle":
                self.idle = True
            elif state == "busy":
                self.started = True
        else:
            self.collector.feed(msg)
            if self.streamer is not None:
                self.streamer.feed(msg)

    def drain_nowait(self) -> None:
        """Take IOPub messages that are already queued, without waiting (a bounded number:
        a flooding thread must not keep the step from ending)."""
        for _ in range(MAX_DRAIN_MESSAGES):
            if self.broken is not None:
                return
            try:
                frames = self.kernel._recv_iopub_frames_nowait()
                if frames is None:
                    return
                self._take_iopub(frames)
            except Exception as exc:
                self.broken = f"{type(exc).__name__}: {exc}"


def _parent_msg_id(session: Session, frames: list[bytes]) -> str | None:
    _, frames = session.feed_identities(frames)
    return session.unpack(frames[2]).get("msg_id")
