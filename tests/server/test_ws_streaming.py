"""Streamed output over the WebSocket: an opt-in extension, as raw frames and through CodingEnv."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from kernelenv import CodingEnv, OutputEvent
from kernelenv.server import ServerConfig, ServerThread

pytestmark = pytest.mark.anyio

# Prints, then waits (up to a minute) for a file "go" in its working directory that the test
# writes only once it has received the first output: "signal seen" proves the output came
# while the cell was still running.
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
WORK_DIR = "import os; os.getcwd()"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(ServerConfig(port=0, pool_size=2, step_timeout_s=120, no_token=True)) as server:
        yield server


def ws_url(server: ServerThread) -> str:
    return server.base_url.replace("http", "ws") + "/ws"


async def test_raw_frames_stream_outputs_before_the_observation_only_when_asked(server):
    async with connect(ws_url(server)) as ws:

        async def send(kind, data=None):
            await ws.send(json.dumps({"type": kind, "data": data or {}}))

        await send("reset")
        assert json.loads(await ws.recv())["type"] == "observation"
        await send("step", {"code": WORK_DIR})
        reply = json.loads(await ws.recv())
        work_dir = Path(eval(reply["data"]["observation"]["metadata"]["kernelenv"]["return_value"]))

        await send("step", {"code": TICKING_CELL, "stream": True})
        first = json.loads(await ws.recv())
        assert first == {"type": "output", "data": {
            "kind": "output", "output": {"output_type": "stream", "name": "stdout",
                                         "text": "tick 0\n"},
            "display_id": None, "wait": False}}
        (work_dir / "go").touch()
        frames = [first]
        while frames[-1]["type"] == "output":
            frames.append(json.loads(await ws.recv()))
        assert frames[-1]["type"] == "observation"
        observation = frames[-1]["data"]["observation"]
        assert "signal seen" in observation["stdout"]
        streamed = "".join(f["data"]["output"]["text"] for f in frames[:-1])
        assert streamed == observation["stdout"]
        assert set(observation) <= {"stdout", "stderr", "exit_code", "metadata"}

        # Without the flag (as OpenEnv's clients send steps) the reply is the observation alone.
        await send("step", {"code": "print('plain')"})
        reply = json.loads(await ws.recv())
        assert reply["type"] == "observation"
        assert reply["data"]["observation"]["stdout"] == "plain\n"

        await send("step", {"code": "1", "stream": "yes"})
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["data"]["code"] == "VALIDATION_ERROR"


async def test_coding_env_streams_to_a_callback(server):
    async with CodingEnv(base_url=server.base_url) as env:
        await env.reset()
        work_dir = Path(eval((await env.step(WORK_DIR)).observation.return_value))
        events: list[OutputEvent] = []

        async def on_output(event: OutputEvent) -> None:
            events.append(event)
            if len(events) == 1:
                (work_dir / "go").touch()

        result = await env.step(TICKING_CELL, on_output=on_output)
        assert events[0].output == {"output_type": "stream", "name": "stdout", "text": "tick 0\n"}
        assert "signal seen" in result.observation.stdout
        assert (await env.state()).step_count == 2

        def broken(event: OutputEvent) -> None:
            raise KeyError("callback broke")

        with pytest.raises(KeyError, match="callback broke"):
            await env.step("print(1); print(2)", on_output=broken)
        # The connection is still in step: the next reply answers the next request.
        assert (await env.step("6 * 7")).observation.return_value == "42"


def test_the_blocking_client_streams_to_a_callback(server):
    with CodingEnv(base_url=server.base_url).sync() as env:
        env.reset()
        work_dir = Path(eval(env.step(WORK_DIR).observation.return_value))
        events: list[OutputEvent] = []
        main_thread = threading.current_thread()

        def on_output(event: OutputEvent) -> None:
            assert threading.current_thread() is not main_thread
            events.append(event)
            if len(events) == 1:
                (work_dir / "go").touch()

        result = env.step(TICKING_CELL, on_output=on_output)
        assert "signal seen" in result.observation.stdout
        assert [e.output["text"] for e in events][:2] == ["tick 0\n", "signal seen\n"]
