"""Live fork over the server: POST /fork, the WebSocket ``fork`` frame and the MCP tool."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from kernelenv.server import ServerConfig, ServerThread

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(ServerConfig(port=0, pool_size=1, max_sessions=6, no_token=True)) as server:
        yield server


@pytest.fixture
async def http(server):
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
        yield http


async def step(http, episode_id, code):
    reply = await http.post("/step", json={"episode_id": episode_id, "action": {"code": code}})
    assert reply.status_code == 200, reply.text
    return reply.json()["observation"]


async def test_post_fork_makes_steppable_http_episodes(http):
    parent = (await http.post("/reset", json={})).json()["episode_id"]
    await step(http, parent, "x = 20")
    reply = await http.post("/fork", json={"episode_id": parent, "n": 2})
    assert reply.status_code == 200, reply.text
    children = reply.json()["episode_ids"]
    assert len(set(children)) == 2 and parent not in children
    try:
        for i, child in enumerate(children):
            seen = await step(http, child, f"x += {i + 1}")
            assert seen["exit_code"] == 0, seen
            state = (await http.get("/state", params={"episode_id": child})).json()
            assert state["episode_id"] == child and state["step_count"] == 2
        parent_now = await step(http, parent, "print(x)")
        assert parent_now["stdout"] == "20\n"
        child_now = await step(http, children[1], "print(x)")
        assert child_now["stdout"] == "22\n"
    finally:
        for episode_id in [parent, *children]:
            await http.post("/close", json={"episode_id": episode_id})


async def test_fork_is_bounded_and_checked(http, server):
    parent = (await http.post("/reset", json={})).json()["episode_id"]
    try:
        too_many = await http.post("/fork", json={"episode_id": parent, "n": 17})
        assert too_many.status_code == 422
        over_capacity = await http.post("/fork", json={"episode_id": parent, "n": 6})
        assert over_capacity.status_code == 503, over_capacity.text
        unknown = await http.post("/fork", json={"episode_id": "nope", "n": 1})
        assert unknown.status_code == 404
        missing = await http.post("/fork", json={"n": 1})
        assert missing.status_code == 422
        assert (await http.get("/health")).json()["active_sessions"] == 1
    finally:
        await http.post("/close", json={"episode_id": parent})


async def test_websocket_fork_frame_and_owner_check(server, http):
    async with connect(server.base_url.replace("http", "ws") + "/ws") as ws:

        async def exchange(frame):
            await ws.send(json.dumps(frame))
            return json.loads(await ws.recv())

        reset = await exchange({"type": "reset", "data": {"episode_id": "ws-parent"}})
        assert reset["type"] == "observation"
        await exchange({"type": "step", "data": {"code": "y = 'branch'"}})
        reply = await exchange({"type": "fork", "data": {"n": 1}})
        assert reply["type"] == "fork", reply
        [child] = reply["data"]["episode_ids"]
        try:
            seen = await step(http, child, "print(y)")
            assert seen["stdout"] == "branch\n"
            # The WebSocket's own episode cannot be forked over HTTP by someone else.
            denied = await http.post("/fork", json={"episode_id": "ws-parent", "n": 1})
            assert denied.status_code == 409
        finally:
            await http.post("/close", json={"episode_id": child})


async def test_mcp_fork_tool(http):
    async def call(name, **arguments):
        request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": name, "arguments": arguments}}
        reply = (await http.post("/mcp", json=request)).json()
        assert "result" in reply and not reply["result"]["isError"], reply
        return reply["result"]["structuredContent"]

    await call("reset", episode_id="mcp-parent")
    await call("run_code", episode_id="mcp-parent", code="z = 5")
    children = (await call("fork", episode_id="mcp-parent", n=2))["episode_ids"]
    try:
        outs = [await call("run_code", episode_id=c, code="print(z * 2)") for c in children]
        assert [o["stdout"] for o in outs] == ["10\n", "10\n"]
    finally:
        for episode_id in ["mcp-parent", *children]:
            await http.post("/close", json={"episode_id": episode_id})


async def test_a_fork_of_a_fork_over_http_and_closed_parents_still_count(http, server):
    parent = (await http.post("/reset", json={})).json()["episode_id"]
    opened = [parent]
    try:
        await step(http, parent, "x = 1")
        child = (await http.post("/fork", json={"episode_id": parent, "n": 1})).json()
        opened += child["episode_ids"]
        await step(http, opened[1], "x += 1")
        reply = await http.post("/fork", json={"episode_id": opened[1], "n": 1})
        assert reply.status_code == 200, reply.text  # a fork of a fork
        grandchild = reply.json()["episode_ids"][0]
        opened.append(grandchild)
        assert (await step(http, grandchild, "print(x)"))["stdout"] == "2\n"
        # Closed, the parent and the child keep running for the grandchild in their sandboxes:
        # they still take their places under max_sessions (6), else a chain of forks whose
        # parents close would hold kernels without bound.
        for episode_id in opened[:2]:
            assert (await http.post("/close", json={"episode_id": episode_id})).status_code == 200
        others = []
        while True:
            reply = await http.post("/reset", json={})
            if reply.status_code != 200:
                assert reply.status_code == 503, reply.text
                break
            others.append(reply.json()["episode_id"])
            assert len(others) <= server.config.max_sessions
        assert len(others) == server.config.max_sessions - 3
        opened += others
        assert (await step(http, grandchild, "print(x + 1)"))["stdout"] == "3\n"
    finally:
        for episode_id in opened:
            await http.post("/close", json={"episode_id": episode_id})
