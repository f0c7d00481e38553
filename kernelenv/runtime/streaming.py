"""Live output of a running step: IOPub messages as output events, delivered as they arrive."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..models import CodeObservation, OutputCallback, OutputEvent
from .outputs import output_from_msg
from .sizes import held_bytes

log = logging.getLogger(__name__)

T = TypeVar("T")

# Where a running step puts its events: called on the kernel's read loop, so it must not block.
OutputSink = Callable[[OutputEvent], None]

# Counted for every event on top of its text, so a flood of empty events is bounded too.
EVENT_OVERHEAD_BYTES = 64
_OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error")


def stream_stopped_marker(limit: int) -> str:
    """The text of the event sent where live output stops (the observation has it all)."""
    return (
        f"\n[kernelenv: live output stopped after {limit} bytes; the step's observation "
        "has its outputs]\n"
    )


def event_of(msg: dict[str, Any]) -> OutputEvent | None:
    """The output event of an IOPub message of the running cell, or None if it shows nothing."""
    msg_type = msg["msg_type"]
    content = msg["content"]
    display_id = (content.get("transient") or {}).get("display_id")
    if msg_type in _OUTPUT_TYPES:
        return OutputEvent(kind="output", output=output_from_msg(msg), display_id=display_id)
    if msg_type == "clear_output":
        return OutputEvent(kind="clear_output", wait=bool(content.get("wait")))
    if msg_type == "update_display_data" and display_id:
        output = {
            "output_type": "display_data",
            "data": dict(content.get("data") or {}),
            "metadata": dict(content.get("metadata") or {}),
        }
        return OutputEvent(kind="update_display", output=output, display_id=display_id)
    return None


def events_of_outputs(outputs: list[dict[str, Any]]) -> list[OutputEvent]:
    """Events that rebuild finished outputs (for kernels that cannot stream, such as Ray's)."""
    return [OutputEvent(kind="output", output=output) for output in outputs]


class OutputStreamer:
    """Turns one step's IOPub messages into events for a sink, at most ``max_output_bytes``.

    Past the budget one marker event says that live output stopped; the step goes on and its
    observation still has every output (under its own cap). A sink that fails (its consumer
    went away) stops the events, never the step.
    """

    def __init__(self, sink: OutputSink, max_output_bytes: int) -> None:
        self.sink = sink
        self.max_output_bytes = max_output_bytes
        self.sent_bytes = 0
        self.stopped = False

    def feed(self, msg: dict[str, Any]) -> None:
        """Send the event of one IOPub message of the running cell, if it has one."""
        if self.stopped:
            return
        event = event_of(msg)
        if event is None:
            return
        size = EVENT_OVERHEAD_BYTES + _output_size(event.output)
        if self.sent_bytes + size > self.max_output_bytes:
            self.stopped = True
            marker = {"output_type": "stream", "name": "stderr",
                      "text": stream_stopped_marker(self.max_output_bytes)}
            self._emit(OutputEvent(kind="output", output=marker))
            return
        self.sent_bytes += size
        self._emit(event)

    def _emit(self, event: OutputEvent) -> None:
        try:
            self.sink(event)
        except Exception as exc:  # noqa: BLE001 - the consumer is gone; the step must go on
            log.debug("live output stopped: %s", exc)
            self.stopped = True


async def run_streamed(
    run: Callable[[OutputSink], Awaitable[T]], on_output: OutputCallback
) -> T:
    """Run a step whose events go to ``on_output`` in order, all of them before it returns.

    The kernel's read loop never waits for the callback: events queue between them (at most
    the step's byte budget, see :class:`OutputStreamer`). An exception of the callback stops
    the delivery and is raised once the step has ended (it was recorded as usual).
    """
    send, receive = anyio.create_memory_object_stream[OutputEvent](math.inf)
    failures: list[Exception] = []

    async def deliver() -> None:
        async with receive:
            async for event in receive:
                if failures:
                    continue  # keep draining, so the step is never held up
                try:
                    result = on_output(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:  # noqa: BLE001 - re-raised below, after the step
                    failures.append(exc)

    step_errors: list[Exception] = []
    async with anyio.create_task_group() as group:
        group.start_soon(deliver)
        with send:
            try:
                result = await run(send.send_nowait)
            except Exception as exc:  # noqa: BLE001 - raised as is below, not in a group
                step_errors.append(exc)
    if step_errors:
        raise step_errors[0]
    if failures:
        failures[0].add_note(
            "raised by the on_output callback; the step itself ran to its end and was "
            "recorded (env.episode.steps[-1].observation)"
        )
        raise failures[0]
    return result


class StepStream:
    """``async for item in env.stream(action)``: output events as they arrive, then the observation.

    The last item is the step's :class:`~kernelenv.models.CodeObservation` (also kept in
    :attr:`observation`). Leaving the loop early does not stop the step: the episode's next
    call waits for it, and :meth:`aclose` (or ``async with env.stream(...)``) waits for it here.
    """

    def __init__(self, run: Callable[[OutputSink], Awaitable[CodeObservation]]) -> None:
        self._run = run
        self._task: asyncio.Task[CodeObservation] | None = None
        self._receive: MemoryObjectReceiveStream[OutputEvent] | None = None
        self._finished = False
        self.observation: CodeObservation | None = None

    def __aiter__(self) -> StepStream:
        return self

    async def __anext__(self) -> OutputEvent | CodeObservation:
        if self._finished:
            raise StopAsyncIteration
        if self._task is None:
            self._start()
        assert self._receive is not None and self._task is not None
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            self._finished = True
            self._receive.close()
            self.observation = await self._task
            return self.observation

    async def __aenter__(self) -> StepStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop iterating and wait for the step to end (its remaining events are dropped)."""
        if self._finished:
            return
        self._finished = True
        if self._task is None:
            return
        assert self._receive is not None
        self._receive.close()
        self.observation = await self._task

    def _start(self) -> None:
        send, self._receive = anyio.create_memory_object_stream[OutputEvent](math.inf)

        async def run() -> CodeObservation:
            with send:
                return await self._run(send.send_nowait)

        # A task, not a task group: the step must run between the consumer's awaits and
        # finish even if the consumer stops iterating (or the episode is left mid-step).
        self._task = asyncio.get_running_loop().create_task(run(), name="kernelenv-stream")
        self._task.add_done_callback(_retrieve_exception)


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    # An abandoned stream's failed step is logged here rather than as "never retrieved".
    if not task.cancelled() and task.exception() is not None:
        log.debug("a streamed step failed: %r", task.exception())


def _output_size(output: dict[str, Any] | None) -> int:
    return held_bytes(output) if output else 0
