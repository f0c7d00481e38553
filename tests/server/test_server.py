"""The server on a real uvicorn on loopback, driven by CodingEnv, raw frames and HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from kernelenv import CodeAction, CodingEnv, ServerError, StepStatus
from kernelenv.server import ServerConfig, ServerThread
from kernelenv.wire import RICH_KEY

pytestmark = pytest.mark.anyio

MAX_MESSAGE_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = ServerConfig(
        port=0, pool_size=2, max_message_bytes=MAX_MESSAGE_BYTES, no_token=True
    )
    with ServerThread(config) as server:
        yield server


@pytest.fixture
async def env(server):
    async with CodingEnv(base_url=server.base_url) as env:
        yield env


@pytest.fixture
async def raw(server):
    """A bare WebSocket speaking frames: ``await raw(frame) -> reply``."""
    async with connect(server.base_url.replace("http", "ws") + "/ws") as ws:

        async def exchange(frame):
            await ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))
            return json.loads(await ws.recv())

        yield exchange


@pytest.fixture
async def http(server):
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        yield http


async def test_reset_step_state_keep_the_episode(env):
    result = await env.reset(seed=7, episode_id="episode-abc")
    assert result.observation.metadata["episode_id"] == "episode-abc"
    await env.step(CodeAction(code="import random\nfirst = random.random()\nx = 40"))
    result = await env.step("print(x + 2)\nx + 1")
    assert result.observation.stdout == "42\n"
    assert result.observation.return_value == "41"
    state = await env.state()
    assert (state.episode_id, state.step_count, state.seed) == ("episode-abc", 2, 7)
    # The seed was honoured: the same seed gives the same first random number.
    first = (await env.step("first")).observation.return_value
    await env.reset(seed=7)
    again = (await env.step("import random; random.random()")).observation.return_value
    assert first == again


async def test_rich_fields_travel_in_metadata_and_come_back_typed(env):
    await env.reset()
    result = await env.step("from IPython.display import HTML, display\n"
                            "display(HTML('<b>hi</b>'))\n1 / 0")
    obs = result.observation
    assert obs.status is StepStatus.ERROR and obs.exit_code == 1
    assert obs.error is not None and obs.error.ename == "ZeroDivisionError"
    assert any("text/html" in o.get("data", {}) for o in obs.outputs)
    assert obs.execution_count == 1
    assert RICH_KEY not in obs.metadata and RICH_KEY not in result.metadata


async def test_wire_observation_has_only_openenv_keys(raw):
    await raw({"type": "reset", "data": {}})
    reply = await raw({"type": "step", "data": {"code": "print('hi')"}})
    assert reply["type"] == "observation"
    data = reply["data"]
    assert set(data["observation"]) == {"stdout", "stderr", "exit_code", "metadata"}
    assert data["observation"]["stdout"] == "hi\n"
    assert data["metadata"][RICH_KEY]["status"] == "ok"
    assert set(data) >= {"reward", "done", "metadata"}


async def test_request_id_makes_a_retried_step_run_once(env):
    await env.reset()
    await env.step("n = 0")
    first = await env.step("n += 1; n", request_id="req-1")
    retry = await env.step("n += 1; n", request_id="req-1")
    assert first.observation.return_value == retry.observation.return_value == "1"
    assert (await env.step("n")).observation.return_value == "1"


async def test_step_timeout_comes_back_as_an_observation(env):
    await env.reset()
    result = await env.step("import time; time.sleep(30)", timeout_s=0.5)
    assert result.observation.status is StepStatus.TIMEOUT and result.observation.exit_code == 124
    assert (await env.step("'still here'")).observation.return_value == "'still here'"


@pytest.mark.parametrize(
    ("frame", "code", "needle"),
    [
        ("{not json", "INVALID_JSON", "invalid JSON"),
        (b"\xff\xfe not utf-8", "INVALID_JSON", "invalid JSON"),
        ({"type": "teleport"}, "UNKNOWN_TYPE", "teleport"),
        ({"data": {}}, "VALIDATION_ERROR", "type"),
        ([1, 2], "VALIDATION_ERROR", "JSON object"),
        ({"type": "step", "data": {"code": 5}}, "VALIDATION_ERROR", "code"),
        ({"type": "step", "data": {}}, "VALIDATION_ERROR", "code: Field required"),
        ({"type": "step", "data": {"code": "1", "bogus": 1}}, "VALIDATION_ERROR", "bogus"),
        ({"type": "step", "data": "print(1)"}, "VALIDATION_ERROR", "must be a JSON object"),
        ({"type": "reset", "data": {"seed": "abc"}}, "VALIDATION_ERROR", "seed"),
        # NaN in a frame: its error must still be sendable (it was a reset connection).
        ({"type": "step", "data": {"code": "1", "timeout_s": float("nan")}}, "VALIDATION_ERROR",
         "timeout_s"),
    ],
)
async def test_bad_frames_get_an_error_and_the_session_goes_on(raw, frame, code, needle):
    await raw({"type": "reset", "data": {"episode_id": "bad-input"}})
    await raw({"type": "step", "data": {"code": "kept = 'yes'"}})
    reply = await raw(frame)
    assert reply["type"] == "error"
    assert reply["data"]["code"] == code
    assert needle in reply["data"]["message"]
    if code == "VALIDATION_ERROR" and isinstance(frame, dict) and "type" in frame:
        assert reply["data"]["errors"], "validation errors list what is wrong"
    after = await raw({"type": "step", "data": {"code": "kept"}})
    assert after["data"]["metadata"][RICH_KEY]["return_value"] == "'yes'"


async def test_agent_code_that_kills_its_kernel_gets_an_observation(env):
    await env.reset()
    died = await env.step("import os; os._exit(3)")
    assert died.observation.status is StepStatus.KERNEL_DIED and died.observation.exit_code == 137
    after = await env.step("'fresh kernel'")
    assert after.observation.return_value == "'fresh kernel'"
    assert after.observation.kernel_restarted


async def test_step_before_reset_is_a_session_error(raw):
    reply = await raw({"type": "step", "data": {"code": "1"}})
    assert reply["data"]["code"] == "SESSION_ERROR" and "reset" in reply["data"]["message"]
    assert (await raw({"type": "reset", "data": {}}))["type"] == "observation"


async def test_a_taken_episode_id_is_refused(server, env):
    await env.reset(episode_id="taken")
    async with CodingEnv(base_url=server.base_url) as other:
        with pytest.raises(ServerError, match="in use") as caught:
            await other.reset(episode_id="taken")
        assert caught.value.code == "VALIDATION_ERROR"
        assert (await other.reset(episode_id="free")).observation.metadata["episode_id"] == "free"


async def test_http_episodes_live_across_requests(http):
    reply = (await http.post("/reset", json={"episode_id": "http-1", "seed": 3})).json()
    assert reply["episode_id"] == "http-1"
    assert set(reply["observation"]) == {"stdout", "stderr", "exit_code", "metadata"}
    step = await http.post("/step", json={"episode_id": "http-1", "action": {"code": "y = 5"}})
    assert step.status_code == 200
    step = await http.post("/step", json={"episode_id": "http-1", "action": {"code": "print(y*2)"}})
    assert step.json()["observation"]["stdout"] == "10\n"
    state = (await http.get("/state", params={"episode_id": "http-1"})).json()
    assert (state["episode_id"], state["step_count"], state["seed"]) == ("http-1", 2, 3)
    # request_id at the top level makes retries safe.
    body = {"episode_id": "http-1", "action": {"code": "y += 1; y"}, "request_id": "r1"}
    first = (await http.post("/step", json=body)).json()
    retry = (await http.post("/step", json=body)).json()
    assert first == retry and first["observation"]["metadata"][RICH_KEY]["return_value"] == "6"
    # timeout_s bounds the step.
    slow = {"episode_id": "http-1", "action": {"code": "import time; time.sleep(20)"},
            "timeout_s": 0.5}
    assert (await http.post("/step", json=slow)).json()["observation"]["exit_code"] == 124
    # Resetting the same id restarts that episode in place.
    await http.post("/reset", json={"episode_id": "http-1"})
    state = (await http.get("/state", params={"episode_id": "http-1"})).json()
    assert state["step_count"] == 0
    assert (await http.post("/close", json={"episode_id": "http-1"})).status_code == 200
    assert (await http.get("/state", params={"episode_id": "http-1"})).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "needle"),
    [
        ("get", "/state", {"params": {"episode_id": "nope"}}, 404, "no live episode"),
        ("post", "/step", {"json": {"episode_id": "nope", "action": {"code": "1"}}}, 404, "nope"),
        ("post", "/step", {"json": {"action": {"code": "1"}}}, 422, "episode_id"),
        ("post", "/step", {"json": {"episode_id": "x", "action": "1"}}, 422, "action"),
        ("post", "/step", {"content": b"{oops", "headers": {"content-type": "application/json"}},
         422, "JSON"),
        ("post", "/reset", {"json": {"seed": "abc"}}, 422, "seed"),
        # NaN (which Python's JSON accepts) answered 500 when the 422 echoed it back.
        ("post", "/step", {"content": b'{"episode_id": "x", "action": {"code": "1"}, '
                                      b'"timeout_s": NaN}',
                           "headers": {"content-type": "application/json"}}, 422, "timeout_s"),
        ("post", "/reset", {"content": b"x" * (MAX_MESSAGE_BYTES + 1),
                            "headers": {"content-type": "application/json"}}, 413, "limit"),
        ("get", "/state", {}, 422, "episode_id"),
    ],
)
async def test_bad_http_requests_get_a_4xx_with_a_message(http, method, path, kwargs, status,
                                                          needle):
    response = await getattr(http, method)(path, **kwargs)
    assert response.status_code == status
    assert needle in response.text
    assert (await http.get("/health")).json()["status"] == "healthy"


async def test_invalid_http_action_is_422_and_the_episode_goes_on(http):
    await http.post("/reset", json={"episode_id": "http-bad"})
    bad = await http.post("/step", json={"episode_id": "http-bad", "action": {"code": 1}})
    assert bad.status_code == 422 and "code" in bad.json()["detail"]
    good = await http.post("/step", json={"episode_id": "http-bad", "action": {"code": "2"}})
    assert good.json()["observation"]["metadata"][RICH_KEY]["return_value"] == "2"
    assert "metadata" not in good.json()  # once, inside the observation, not twice


async def test_discovery_routes(http):
    schema = (await http.get("/schema")).json()
    assert "code" in json.dumps(schema["action"])
    assert "stdout" in schema["observation"]["properties"]
    assert "episode_id" in schema["state"]["properties"]
    meta = (await http.get("/metadata")).json()
    assert meta["name"] == "kernelenv" and meta["description"]
    openapi = (await http.get("/openapi.json")).json()
    assert {"/reset", "/step", "/state", "/mcp"} <= set(openapi["paths"])
    assert isinstance(openapi["info"]["version"], str)


async def test_mcp_over_http(http):
    assert (await http.post("/mcp", json={})).json()["jsonrpc"] == "2.0"
    listing = (await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
    names = {tool["name"] for tool in listing.json()["result"]["tools"]}
    assert {"run_code", "reset", "get_state"} <= names

    async def call(name, **arguments):
        request = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                   "params": {"name": name, "arguments": arguments}}
        return (await http.post("/mcp", json=request)).json()

    started = await call("reset", episode_id="mcp-1")
    assert started["result"]["structuredContent"]["episode_id"] == "mcp-1"
    ran = await call("run_code", episode_id="mcp-1", code="z = 3\nprint(z * 3)")
    assert ran["result"]["isError"] is False and "9" in ran["result"]["content"][0]["text"]
    state = await call("get_state", episode_id="mcp-1")
    assert state["result"]["structuredContent"]["step_count"] == 1
    missing = await call("run_code", code="1")
    assert missing["error"]["code"] == -32602 and "episode_id" in missing["error"]["message"]
    unknown = await call("fly", episode_id="mcp-1")
    assert "unknown tool" in unknown["error"]["message"]
    assert (await http.post("/close", json={"episode_id": "mcp-1"})).status_code == 200


async def test_mcp_frames_run_on_the_connections_episode(env):
    await env.reset(episode_id="mcp-ws")
    listing = await env.mcp("tools/list")
    assert "run_code" in {tool["name"] for tool in listing["result"]["tools"]}
    ran = await env.mcp("tools/call", {"name": "run_code", "arguments": {"code": "w = 11; w"}})
    assert ran["result"]["structuredContent"]["return_value"] == "11"
    assert (await env.step("w")).observation.return_value == "11"
    assert (await env.state()).step_count == 2
    bad = await env.mcp("tools/call", {"name": "run_code", "arguments": {"code": 3}})
    assert bad["result"]["isError"] is True
    assert (await env.mcp("nope"))["error"]["code"] == -32601


async def test_auth_token_guards_every_route_but_health():
    config = ServerConfig(port=0, pool_size=0, token="s3cret")
    with ServerThread(config) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            assert (await http.get("/health")).status_code == 200
            refused = await http.get("/schema")
            assert refused.status_code == 401 and "Bearer <token>" in refused.json()["detail"]
            wrong = await http.get("/schema", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await http.get("/schema", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200
        with pytest.raises(ServerError, match="token"):
            async with CodingEnv(base_url=server.base_url) as env:
                await env.state()
        headers = {"Authorization": "Bearer s3cret", "X-Trace-Id": "trace-1"}
        async with CodingEnv(base_url=server.base_url, headers=headers) as env:
            assert (await env.state()).episode_id is None
        # Browsers cannot set headers on a WebSocket: the token may come as a query parameter.
        async with connect(server.base_url.replace("http", "ws") + "/ws?token=s3cret") as ws:
            await ws.send(json.dumps({"type": "state"}))
            assert json.loads(await ws.recv())["type"] == "state"


async def test_throwaway_steps_over_the_websocket_http_and_mcp(env, raw, http):
    # Our client, a raw OpenEnv-style frame (the action's `keep` field), HTTP and MCP.
    await env.reset(episode_id="throwaway-ws")
    await env.step("v = 1")
    tried = await env.step("v = 2; v", keep=False)
    assert tried.observation.return_value == "2"
    assert tried.observation.metadata["throwaway"] is True
    assert (await env.step("v")).observation.return_value == "1"
    assert (await env.state()).step_count == 2
    await raw({"type": "reset", "data": {"episode_id": "throwaway-raw"}})
    await raw({"type": "step", "data": {"code": "u = 1"}})
    reply = await raw({"type": "step", "data": {"code": "u = 9; print(u)", "keep": False}})
    assert reply["type"] == "observation" and reply["data"]["observation"]["stdout"] == "9\n"
    assert (await raw({"type": "state"}))["data"]["step_count"] == 1
    await http.post("/reset", json={"episode_id": "throwaway-http"})
    await http.post("/step", json={"episode_id": "throwaway-http", "action": {"code": "t = 1"}})
    step = await http.post("/step", json={"episode_id": "throwaway-http",
                                          "action": {"code": "t = 4; print(t)", "keep": False}})
    assert step.json()["observation"]["stdout"] == "4\n"
    request = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "run_code", "arguments": {"episode_id": "throwaway-http", "code": "t = 5; t",
                                          "keep": False}}}
    ran = (await http.post("/mcp", json=request)).json()
    assert ran["result"]["structuredContent"]["return_value"] == "5"
    state = (await http.get("/state", params={"episode_id": "throwaway-http"})).json()
    assert state["step_count"] == 1
    seen = await http.post("/step", json={"episode_id": "throwaway-http", "action": {"code": "t"}})
    assert seen.json()["observation"]["metadata"][RICH_KEY]["return_value"] == "1"
    assert (await http.post("/close", json={"episode_id": "throwaway-http"})).status_code == 200
