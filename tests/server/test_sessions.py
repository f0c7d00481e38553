"""Many sessions on one server: isolation, a responsive loop, capacity, disconnects, reaping."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from kernelenv import CodingEnv, EnvClosedError, ServerError
from kernelenv.server import ServerConfig, ServerThread

pytestmark = pytest.mark.anyio

SESSIONS = 32


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = ServerConfig(
        port=0, pool_size=4, max_sessions=SESSIONS + 4, idle_timeout_s=1.0, no_token=True
    )
    with ServerThread(config) as server:
        yield server


def ws_url(server: ServerThread) -> str:
    return server.base_url.replace("http", "ws") + "/ws"


async def wait_until(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_many_sessions_are_isolated_and_health_answers_during_long_cells(server):
    clients = [CodingEnv(base_url=server.base_url) for _ in range(SESSIONS)]
    try:
        await asyncio.gather(*(c.reset(episode_id=f"s{i}") for i, c in enumerate(clients)))
        await asyncio.gather(*(c.step(f"secret = {i}") for i, c in enumerate(clients)))

        # Every session runs a long cell; meanwhile the server must answer health checks.
        sleeping = [asyncio.ensure_future(c.step("import time; time.sleep(2); secret"))
                    for c in clients]
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as http:
            health_checks = []
            while not all(task.done() for task in sleeping):
                reply = await http.get("/health")
                health_checks.append((reply.status_code, reply.json()["active_sessions"],
                                      sum(task.done() for task in sleeping)))
                await asyncio.sleep(0.1)
        results = await asyncio.gather(*sleeping)
        # Health answered while no cell had finished yet, with every session counted.
        assert any(done == 0 and status == 200 and active >= SESSIONS
                   for status, active, done in health_checks), health_checks

        assert [r.observation.return_value for r in results] == [str(i) for i in range(SESSIONS)]
        states = await asyncio.gather(*(c.state() for c in clients))
        assert [(s.episode_id, s.step_count) for s in states] == [
            (f"s{i}", 2) for i in range(SESSIONS)
        ]
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    assert await wait_until(lambda: server.app.state.sessions.active_count == 0)


async def test_past_the_limit_capacity_reached_then_a_clean_close():
    config = ServerConfig(port=0, pool_size=0, max_sessions=2, no_token=True)
    with ServerThread(config) as server:
        async with CodingEnv(base_url=server.base_url) as a, \
                CodingEnv(base_url=server.base_url) as b:
            await a.state(), await b.state()
            async with connect(ws_url(server)) as ws:
                frame = json.loads(await ws.recv())
                assert frame["type"] == "error"
                assert frame["data"]["code"] == "CAPACITY_REACHED"
                assert (frame["data"]["active_sessions"], frame["data"]["max_sessions"]) == (2, 2)
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            async with CodingEnv(base_url=server.base_url) as c:
                with pytest.raises(ServerError) as caught:
                    await c.state()
                assert caught.value.code == "CAPACITY_REACHED"
        # Once a session ends, there is room again.
        async with CodingEnv(base_url=server.base_url) as d:
            assert (await d.state()).step_count == 0


async def test_a_disconnect_mid_step_interrupts_and_releases_the_kernel(server):
    sessions = server.app.state.sessions
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"type": "reset", "data": {"episode_id": "leaver"}}))
        await ws.recv()
        kernel = sessions.get("leaver").env.kernel
        pid = kernel.pid
        await ws.send(json.dumps({"type": "step", "data": {"code": "import time; time.sleep(60)"}}))
        await asyncio.sleep(0.5)
    # The socket is gone without a close frame and without waiting for the reply.
    assert await wait_until(lambda: sessions.find("leaver") is None)
    assert await wait_until(lambda: not psutil.pid_exists(pid) or
                            psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


async def test_a_cancelled_client_call_drops_the_connection_and_frees_the_kernel(server):
    sessions = server.app.state.sessions
    env = CodingEnv(base_url=server.base_url)
    try:
        await env.reset(episode_id="cancelled")
        pid = sessions.get("cancelled").env.kernel.pid
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await env.step("import time; time.sleep(60)")
        with pytest.raises(EnvClosedError, match="cancelled"):
            await env.state()
    finally:
        await env.close()
    assert await wait_until(lambda: sessions.find("cancelled") is None)
    assert await wait_until(lambda: not psutil.pid_exists(pid) or
                            psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


async def test_idle_http_episodes_are_reaped(server):
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        assert (await http.post("/reset", json={"episode_id": "idle"})).status_code == 200
        sessions = server.app.state.sessions
        assert sessions.find("idle") is not None
        assert await wait_until(lambda: sessions.find("idle") is None, timeout_s=10)
        reply = await http.get("/state", params={"episode_id": "idle"})
        assert reply.status_code == 404 and "idle" in reply.json()["detail"]
