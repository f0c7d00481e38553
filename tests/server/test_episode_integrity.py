"""Attacks on episodes through a real server: racing retries, close during a step, MCP on a
socket's episode, ids that collided in the journal, ids that broke the export."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import nbformat
import pytest
from websockets.asyncio.client import connect

from kernelenv.episodes.journal import Journal
from kernelenv.server import ServerConfig, ServerThread

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def journal_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("journal")


@pytest.fixture(scope="module")
def server(journal_dir) -> Iterator[ServerThread]:
    config = ServerConfig(port=0, pool_size=2, no_token=True, journal_dir=str(journal_dir))
    with ServerThread(config) as server:
        yield server


@pytest.fixture
async def http(server) -> httpx.AsyncClient:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        yield client


def return_value(reply: httpx.Response) -> str | None:
    assert reply.status_code == 200, reply.text
    return reply.json()["observation"]["metadata"]["kernelenv"]["return_value"]


async def wait_until_stepping(server: ServerThread, episode_id: str) -> None:
    """Until the episode's step lock is held (its step runs); no timing is asserted."""
    env = server.app.state.sessions.get(episode_id).env
    with anyio.fail_after(60):
        while not env._step_lock().locked():
            await anyio.sleep(0.02)


async def test_a_retry_racing_its_original_runs_the_code_once(server, http, server_sound):
    episode_id = (await http.post("/reset", json={"episode_id": "retry-race"})).json()["episode_id"]
    code = "runs = globals().get('runs', 0) + 1\nimport time; time.sleep(1)\nruns"
    body = {"episode_id": episode_id, "request_id": "once", "action": {"code": code}}
    replies: list[httpx.Response] = []

    async def send() -> None:
        replies.append(await http.post("/step", json=body))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(send)
        await wait_until_stepping(server, episode_id)
        tasks.start_soon(send)  # the retry arrives while the original runs
    assert [return_value(r) for r in replies] == ["1", "1"]
    after = await http.post("/step", json={"episode_id": episode_id, "action": {"code": "runs"}})
    assert return_value(after) == "1"  # the code ran once
    state = (await http.get("/state", params={"episode_id": episode_id})).json()
    assert state["step_count"] == 2
    await http.post("/close", json={"episode_id": episode_id})
    server_sound(server.base_url)


async def test_close_during_a_step_interrupts_it_and_then_releases(server, http, server_sound):
    episode_id = (await http.post("/reset", json={"episode_id": "closed-mid-step"})).json()[
        "episode_id"]
    env = server.app.state.sessions.get(episode_id).env
    kernel = env.kernel
    step: list[httpx.Response] = []

    async def run_long_step() -> None:
        step.append(await http.post("/step", json={
            "episode_id": episode_id, "timeout_s": 120,
            "action": {"code": "import time\nfor _ in range(1200): time.sleep(0.1)"}}))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_long_step)
        await wait_until_stepping(server, episode_id)
        closed = await http.post("/close", json={"episode_id": episode_id})
    assert closed.status_code == 200
    # The step was interrupted and answered; the kernel was released only after it.
    assert step[0].status_code == 200, step[0].text
    observation = step[0].json()["observation"]
    assert "KeyboardInterrupt" in observation["stderr"] or observation["metadata"]["kernelenv"][
        "status"] == "interrupted", observation
    assert env.kernel is None and kernel is not None
    assert (await http.get("/state", params={"episode_id": episode_id})).status_code == 404
    server_sound(server.base_url)


async def test_mcp_cannot_step_an_episode_a_websocket_owns(server, http, server_sound):
    async with connect(server.base_url.replace("http", "ws") + "/ws") as ws:
        await ws.send(json.dumps({"type": "reset", "data": {"episode_id": "socket-owned"}}))
        await ws.recv()
        for name, arguments in [("run_code", {"code": "hijacked = True"}), ("get_state", {}),
                                ("export_episode", {})]:
            request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": name, "arguments": {"episode_id": "socket-owned", **arguments}}}
            reply = (await http.post("/mcp", json=request)).json()
            assert "error" in reply and "WebSocket" in reply["error"]["message"], reply
        step = await http.post("/step", json={
            "episode_id": "socket-owned", "action": {"code": "hijacked = True"}})
        assert step.status_code == 409
        await ws.send(json.dumps({"type": "state"}))
        assert json.loads(await ws.recv())["data"]["step_count"] == 0  # nothing ran
        await ws.send(json.dumps({"type": "step", "data": {"code": "'hijacked' in dir()"}}))
        reply = json.loads(await ws.recv())
        assert reply["data"]["metadata"]["kernelenv"]["return_value"] == "False"
    server_sound(server.base_url)


@pytest.mark.parametrize(
    ("episode_id", "needle"),
    [("a b", "characters"), ("../../etc/passwd", "characters"), (".hidden", "characters"),
     ("x" * 129, "128"), ("tab\there", "characters")],
)
async def test_invalid_episode_ids_get_a_clear_422(server, http, episode_id, needle):
    reset = await http.post("/reset", json={"episode_id": episode_id})
    assert reset.status_code == 422 and needle in reset.json()["detail"], reset.text
    export = await http.get(f"/episodes/{quote(episode_id, safe='')}.ipynb")
    assert export.status_code in (404, 422)  # a path with '/' never reaches the route
    assert server.app.state.sessions.active_count == 0


def test_ids_that_cleaned_up_alike_get_their_own_journal_files(tmp_path):
    journal = Journal(tmp_path)
    # The old mapping sent "a b" to "a_b-<hash>", and a client could pick that very name.
    ids = ["a b", "a_b-" + "0" * 12, "a_b", "épisode", "èpisode", "эпизод", "x" * 128,
           "x" * 129, "a.b", "A.b"]
    names = [journal.path_of(i).name for i in ids]
    assert len(set(names)) == len(ids), names
    assert all(journal.path_of(i).parent == tmp_path for i in ids)


async def test_look_alike_and_non_latin1_ids_are_kept_apart_and_exported(
    server, http, journal_dir, server_sound
):
    # Both clean up to the same ASCII; each keeps its own journal and its own export.
    ids = {"épisode-1": "'first'", "èpisode-1": "'second'", "эпизод-一": "'third'"}
    for episode_id, code in ids.items():
        reset = await http.post("/reset", json={"episode_id": episode_id})
        assert reset.status_code == 200, reset.text
        assert return_value(await http.post("/step", json={
            "episode_id": episode_id, "action": {"code": code}})) == code
    for episode_id, code in ids.items():
        live = await http.get(f"/episodes/{quote(episode_id)}.ipynb")
        assert live.status_code == 200, live.text
        disposition = live.headers["content-disposition"]
        assert f"filename*=UTF-8''{quote(episode_id + '.ipynb', safe='')}" in disposition
        await http.post("/close", json={"episode_id": episode_id})
        ended = await http.get(f"/episodes/{quote(episode_id)}.ipynb")  # from the journal now
        assert ended.status_code == 200, ended.text
        notebook = nbformat.reads(ended.text, as_version=4)
        assert [c.source for c in notebook.cells] == [code]
    files = sorted(p.name for p in journal_dir.glob("*.jsonl"))
    assert len([n for n in files if "pisode" in n or "=" in n]) >= len(ids)
    deadline = time.monotonic() + 10
    while server.app.state.sessions.active_count and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    server_sound(server.base_url)
