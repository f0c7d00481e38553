"""Live output of a running step: events as they arrive, in order, before the observation."""

from __future__ import annotations

import threading

import pytest

from kernelenv import CodeObservation, KernelEnv, OutputEvent, ResetNeeded
from kernelenv.runtime.streaming import EVENT_OVERHEAD_BYTES, OutputStreamer, event_of

pytestmark = pytest.mark.anyio

# Prints every 0.2 s for 2 s; after its first line it waits (up to a minute) for a file named
# "go" in its working directory, which the test writes only once it has seen that first line.
# So "signal seen" proves that the first output reached the test while the cell still ran.
TICKING_CELL = """\
import os, time
for i in range(10):
    print('tick', i, flush=True)
    if i == 0:
        for _ in range(1200):
            if os.path.exists('go'):
                break
            time.sleep(0.05)
        print('signal seen' if os.path.exists('go') else 'no signal', flush=True)
    time.sleep(0.2)
"""


def msg(msg_type: str, **content) -> dict:
    return {"msg_type": msg_type, "content": content, "header": {"msg_type": msg_type},
            "parent_header": {"msg_id": "m"}, "metadata": {}}


@pytest.fixture
async def env(shared_pool):
    async with KernelEnv(pool=shared_pool, step_timeout_s=120) as env:
        await env.reset()
        yield env


def signal_file(env: KernelEnv):
    return env.kernel.work_dir / "go"


def test_messages_become_events_as_a_notebook_applies_them():
    assert event_of(msg("stream", name="stdout", text="hi\n")) == OutputEvent(
        kind="output", output={"output_type": "stream", "name": "stdout", "text": "hi\n"})
    shown = event_of(msg("display_data", data={"text/plain": "0%"}, metadata={},
                         transient={"display_id": "bar"}))
    assert shown.kind == "output" and shown.display_id == "bar"
    assert shown.output == {"output_type": "display_data", "data": {"text/plain": "0%"},
                            "metadata": {}}
    update = event_of(msg("update_display_data", data={"text/plain": "100%"}, metadata={},
                          transient={"display_id": "bar"}))
    assert update.kind == "update_display" and update.display_id == "bar"
    assert update.output["data"] == {"text/plain": "100%"}
    assert event_of(msg("clear_output", wait=True)) == OutputEvent(kind="clear_output", wait=True)
    assert event_of(msg("status", execution_state="busy")) is None
    assert event_of(msg("execute_input", code="1", execution_count=1)) is None


def test_live_output_stops_at_the_budget_with_one_marker_and_survives_a_broken_sink():
    events: list[OutputEvent] = []
    streamer = OutputStreamer(events.append, max_output_bytes=1000)
    for _ in range(100):
        streamer.feed(msg("stream", name="stdout", text="x" * 100))
    texts = [event.output["text"] for event in events]
    assert sum(len(text) + EVENT_OVERHEAD_BYTES for text in texts[:-1]) <= 1000
    assert "live output stopped" in texts[-1] and len(events) < 10

    def broken(event: OutputEvent) -> None:
        raise RuntimeError("the consumer left")

    streamer = OutputStreamer(broken, max_output_bytes=1000)
    streamer.feed(msg("stream", name="stdout", text="x"))  # no exception reaches the step
    assert streamer.stopped


async def test_errors_of_the_step_itself_are_raised_as_they_are(shared_pool):
    async with KernelEnv(pool=shared_pool) as env:
        with pytest.raises(ResetNeeded):
            await env.step("1", on_output=print)
        with pytest.raises(ResetNeeded):
            async for _ in env.stream("1"):
                pass


async def test_first_output_arrives_while_the_cell_still_runs(env):
    events: list[OutputEvent] = []
    running_when_first_came: list[bool] = []

    def on_output(event: OutputEvent) -> None:
        events.append(event)
        if len(events) == 1:
            # The episode's step is still in progress: its count has not moved yet.
            running_when_first_came.append(env.state.step_count == 0)
            signal_file(env).touch()

    obs = await env.step(TICKING_CELL, on_output=on_output)
    assert events[0].output["text"] == "tick 0\n"
    assert running_when_first_came == [True]
    assert "signal seen" in obs.stdout  # the cell saw the signal the first event caused
    streamed = "".join(e.output["text"] for e in events if e.output["output_type"] == "stream")
    assert streamed == obs.stdout  # every output came live, and the same as recorded
    assert env.state.step_count == 1


async def test_an_async_callback_and_display_updates_clear_output_and_results(env):
    seen: list[OutputEvent] = []

    async def on_output(event: OutputEvent) -> None:
        seen.append(event)

    code = ("from IPython.display import display, clear_output\n"
            "h = display('0%', display_id=True)\n"
            "h.update('100%')\n"
            "print('gone'); clear_output(wait=True)\n"
            "print('kept')\n"
            "6 * 7")
    obs = await env.step(code, on_output=on_output)
    kinds = [event.kind for event in seen]
    assert kinds == ["output", "update_display", "output", "clear_output", "output", "output"]
    assert seen[1].display_id == seen[0].display_id is not None
    assert seen[1].output["data"]["text/plain"] == "'100%'"
    assert seen[3].wait is True
    assert seen[-1].output["output_type"] == "execute_result" and obs.return_value == "42"


async def test_the_async_iterator_yields_events_then_the_observation(env):
    items = []
    async for item in env.stream(TICKING_CELL):
        items.append(item)
        if len(items) == 1:
            assert env.state.step_count == 0  # the step is still running
            signal_file(env).touch()
    *events, last = items
    assert all(isinstance(event, OutputEvent) for event in events) and events
    assert isinstance(last, CodeObservation) and "signal seen" in last.stdout
    assert env.state.step_count == 1

    # Leaving the loop early does not leave the episode mid-step.
    async with env.stream("print('a'); print('b')") as stream:
        async for _ in stream:
            break
    assert stream.observation is not None and stream.observation.stdout == "a\nb\n"
    assert (await env.step("1 + 1")).return_value == "2"
    assert env.state.step_count == 3


async def test_a_failing_callback_is_raised_after_the_step_was_recorded(env):
    def on_output(event: OutputEvent) -> None:
        raise ValueError("callback broke")

    with pytest.raises(ValueError, match="callback broke"):
        await env.step("print('x'); 5", on_output=on_output)
    assert env.state.step_count == 1
    assert env.episode.steps[-1].observation.return_value == "5"
    assert (await env.step("1 + 1")).return_value == "2"


def test_the_blocking_facade_streams_too(no_leaks):
    with KernelEnv(step_timeout_s=120).sync() as env:
        env.reset()
        events: list[OutputEvent] = []
        facade_thread = threading.current_thread()
        callback_threads = []

        def on_output(event: OutputEvent) -> None:
            events.append(event)
            callback_threads.append(threading.current_thread())
            if len(events) == 1:
                (env.kernel.work_dir / "go").touch()

        obs = env.step(TICKING_CELL, on_output=on_output)
        assert "signal seen" in obs.stdout and events[0].output["text"] == "tick 0\n"
        assert facade_thread not in callback_threads  # it runs on the facade's loop thread
