"""CodingEnv on real servers: the blocking twin, a launched local server, Docker's error path."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator

import httpx
import pytest

from kernelenv import CodeAction, CodingEnv, KernelEnvError, ServerError, ServerStartError
from kernelenv.client.coding_env import websocket_url
from kernelenv.server import ServerConfig, ServerThread


TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(ServerConfig(port=0, pool_size=1, token=TOKEN)) as server:
        yield server


def test_websocket_url_follows_openenv():
    assert websocket_url("http://host:8000") == "ws://host:8000/ws"
    assert websocket_url("https://host/prefix/") == "wss://host/prefix/ws"
    assert websocket_url("ws://host:1/ws") == "ws://host:1/ws"


def test_sync_twin_works_in_plain_code(server):
    with CodingEnv(base_url=server.base_url, token=TOKEN).sync() as env:
        first = env.reset(episode_id="sync-1")
        assert first.observation.metadata["episode_id"] == "sync-1"
        env.step(CodeAction(code="total = sum(range(10))"))
        result = env.step("print(total)")
        assert result.observation.stdout == "45\n" and result.done is False
        assert env.state().step_count == 2


def test_sync_twin_works_inside_a_running_event_loop(server):
    # What a Jupyter cell is: blocking calls made while the caller's loop runs.
    async def notebook_cell():
        with CodingEnv(base_url=server.base_url, token=TOKEN).sync() as env:
            env.reset()
            return env.step("6 * 7").observation.return_value

    assert asyncio.run(notebook_cell()) == "42"


@pytest.mark.anyio
async def test_closing_a_client_leaves_an_existing_server_running(server):
    async with CodingEnv(base_url=server.base_url, token=TOKEN) as env:
        await env.reset()
    await env.close()  # a second close is harmless
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        assert (await http.get("/health")).json()["status"] == "healthy"


@pytest.mark.anyio
async def test_an_unreachable_server_is_a_clear_error():
    env = CodingEnv(base_url="http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ServerError, match="could not connect"):
        await env.reset()


@pytest.mark.anyio
async def test_from_local_server_starts_a_server_and_stops_it_on_close(no_leaks):
    env = CodingEnv.from_local_server(max_sessions=3, pool_size=1, token="t0ken")
    async with env:
        result = await env.reset(episode_id="local")
        assert result.observation.metadata["episode_id"] == "local"
        assert (await env.step("2 ** 10")).observation.return_value == "1024"
        launcher = env._launcher
        process = launcher.process
        assert process is not None and process.poll() is None
        async with httpx.AsyncClient(base_url=env.base_url) as http:
            health = (await http.get("/health")).json()
            assert health["max_sessions"] == 3  # the options reached the server
            assert (await http.get("/schema")).status_code == 401  # and so did the token
    assert process.poll() is not None, "closing the client stops the server it started"


@pytest.mark.anyio
async def test_a_local_server_that_cannot_start_is_a_clear_error(no_leaks):
    env = CodingEnv.from_local_server(max_sessions=0)  # refused by the server's settings
    with pytest.raises(ServerStartError, match="exited with code") as caught:
        async with env:
            pass
    assert "max_sessions" in str(caught.value)  # the server's own message is shown
    assert env._launcher.process is None


def test_from_local_server_rejects_unknown_options():
    with pytest.raises(TypeError, match="max_sesions"):
        CodingEnv.from_local_server(max_sesions=3)


@pytest.mark.anyio
async def test_from_docker_image_without_a_docker_engine_is_a_clear_error():
    # This machine has the docker CLI but no engine (CI may lack both): either way the
    # error names the cause and the way out.
    env = CodingEnv.from_docker_image("kernelenv:latest", health_timeout_s=5)
    with pytest.raises(ServerStartError) as caught:
        await env.reset()
    message = str(caught.value)
    assert isinstance(caught.value, KernelEnvError)
    assert "docker" in message.lower() and "from_local_server" in message
    if shutil.which("docker"):
        assert "kernelenv:latest" in message
    await env.close()


@pytest.mark.anyio
async def test_from_docker_image_with_no_docker_cli():
    env = CodingEnv.from_docker_image("kernelenv:latest", docker="no-such-docker-cli")
    with pytest.raises(ServerStartError, match="not found"):
        await env.reset()
    await env.close()
