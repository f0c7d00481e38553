"""MCP both ways: real MCP servers' tools called from kernel code, and `kernelenv mcp` itself."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernelenv import KernelEnv, KernelPool, MCPConnectionError, MCPServer, StepStatus, ToolRegistry
from kernelenv.sandbox.config import bwrap_problem

pytestmark = pytest.mark.anyio

CALCULATOR = str(Path(__file__).parent / "mcp_servers" / "calculator.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def http_calculator():
    """The calculator MCP server as a real process on loopback (streamable HTTP)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, CALCULATOR, "http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the HTTP MCP test server did not start") from None
                time.sleep(0.05)
        yield {"url": f"http://127.0.0.1:{port}/mcp", "port": port, "pid": process.pid}
    finally:
        process.terminate()
        process.wait(timeout=10)


def calculator_registry(http_url: str | None = None) -> ToolRegistry:
    registry = ToolRegistry()
    registry.add_mcp_server(MCPServer.stdio(sys.executable, [CALCULATOR, "stdio"]))
    if http_url:
        registry.add_mcp_server(MCPServer.http(http_url, prefix="web_"))
    return registry


AGENT_CODE = """
import os
results = {
    "add": add(2, 3),
    "shout": shout("hi", times=2),
    "info": server_info(),
    "web_add": web_add(a=20, b=22),
    "web_info": web_server_info(),
    "kernel_pid": os.getpid(),
}
try:
    divide(1, 0)
except ToolError as exc:
    results["divide_error"] = str(exc)
results
"""


def check_results(observation, http_calculator) -> dict:
    assert observation.status is StepStatus.OK, observation.error
    results = ast.literal_eval(observation.return_value)
    assert results["add"] == 5
    assert results["shout"] == "HI HI"
    assert results["info"]["transport"] == "stdio"
    assert results["web_add"] == 42
    assert results["web_info"] == {"pid": http_calculator["pid"], "transport": "http"}
    assert results["info"]["pid"] != results["kernel_pid"]
    assert "cannot divide by zero" in results["divide_error"]
    calls = observation.metadata["tool_calls"]
    assert [c["tool"] for c in calls] == [
        "add", "shout", "server_info", "web_add", "web_server_info", "divide"
    ]
    assert calls[-1]["ok"] is False and calls[0]["result"] == 5
    return results


async def test_mcp_tools_are_functions_in_the_kernel(shared_pool, http_calculator):
    registry = calculator_registry(http_calculator["url"])
    async with KernelEnv(pool=shared_pool, tools=registry) as env:
        await env.reset()
        observation = await env.step(
            "import inspect; print(inspect.signature(shout)); print(add.__doc__)"
        )
        assert observation.stdout == "(text, times=1)\nAdd two integers.\n"
        assert observation.metadata["tool_calls"] == []  # reading a signature calls nothing
        results = check_results(await env.step(AGENT_CODE), http_calculator)
        # A second episode keeps the env's MCP connections (the same stdio server process).
        await env.reset()
        again = await env.step("server_info()['pid']")
        assert again.return_value == str(results["info"]["pid"])


async def test_mcp_tools_work_under_the_strongest_containment(http_calculator, tmp_path):
    problem = bwrap_problem()
    if problem is not None:
        pytest.skip(f"bubblewrap is not usable on this machine: {problem}")
    registry = calculator_registry(http_calculator["url"])
    async with (
        KernelPool(size=1, sandbox="bwrap") as pool,
        KernelEnv(pool=pool, tools=registry) as env,
    ):
        await env.reset()
        # The kernel itself has no network: the HTTP server is out of its reach...
        direct = await env.step(
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {http_calculator['port']}), timeout=2)"
        )
        assert direct.status is StepStatus.ERROR
        assert direct.error.ename in ("ConnectionRefusedError", "OSError", "TimeoutError")
        # ...and the host's /tmp is not its /tmp; yet every tool works through the host.
        host_file = tmp_path / "host-only.txt"
        host_file.write_text("host only")
        hidden = await env.step(f"open({str(host_file)!r}).read()")
        assert hidden.error is not None and hidden.error.ename == "FileNotFoundError"
        check_results(await env.step(AGENT_CODE), http_calculator)


async def test_an_unreachable_mcp_server_fails_reset_with_a_clear_error(shared_pool):
    registry = ToolRegistry()
    registry.add_mcp_server(
        MCPServer.http(f"http://127.0.0.1:{free_port()}/mcp", name="nowhere", connect_timeout_s=5)
    )
    async with KernelEnv(pool=shared_pool, tools=registry) as env:
        with pytest.raises(MCPConnectionError, match="nowhere"):
            await env.reset()


async def test_only_chosen_tools_and_prefixes(shared_pool):
    registry = ToolRegistry()
    registry.add_mcp_server(
        MCPServer.stdio(sys.executable, [CALCULATOR, "stdio"], prefix="calc_", tool_names=("add",))
    )
    async with KernelEnv(pool=shared_pool, tools=registry) as env:
        await env.reset()
        observation = await env.step("calc_add(1, 2), 'shout' in dir(), 'calc_shout' in dir()")
    assert observation.return_value == "(3, False, False)"


async def test_kernelenv_mcp_over_stdio_with_the_sdk_client(tmp_path):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from kernelenv.server.mcp_tools import TOOLS
    from kernelenv.tools.mcp_sdk import attribute

    server = StdioServerParameters(
        command=sys.executable, args=["-m", "kernelenv", "mcp", "--sandbox", "none"]
    )
    with (tmp_path / "stderr.txt").open("w") as errlog:
        async with (
            stdio_client(server, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            info = await session.initialize()
            assert attribute(info, "server_info").name == "kernelenv"
            listed = {tool.name: tool for tool in (await session.list_tools()).tools}
            assert list(listed) == [t.name for t in TOOLS if not t.server_only]  # the stdio table
            assert {"run_code", "reset", "list_tasks", "submit", "export_episode"} <= set(listed)
            assert attribute(listed["run_code"], "input_schema")["required"] == ["code"]

            first = await session.call_tool("run_code", {"code": "x = 6 * 7\nprint(x)\nx"})
            assert attribute(first, "is_error") is False
            assert attribute(first, "structured_content")["stdout"] == "42\n"
            assert attribute(first, "structured_content")["return_value"] == "42"
            assert "result: 42" in first.content[0].text

            failing = await session.call_tool("run_code", {"code": "1 / 0"})
            assert attribute(failing, "structured_content")["exit_code"] == 1
            assert attribute(failing, "structured_content")["error"]["ename"] == "ZeroDivisionError"

            exported = await session.call_tool("export_episode", {})
            cells = attribute(exported, "structured_content")["notebook"]["cells"]
            assert [c["source"] for c in cells if c["cell_type"] == "code"][:2] == [
                "x = 6 * 7\nprint(x)\nx", "1 / 0"
            ]

            listing = await session.call_tool("list_tasks", {})
            tasks = attribute(listing, "structured_content")["tasks"]
            assert tasks and {"id", "title", "family", "difficulty", "action"} <= set(tasks[0])

            reset = await session.call_tool("reset", {"seed": 3})
            assert attribute(reset, "is_error") is False
            after = await session.call_tool("run_code", {"code": "'x' in dir()"})
            assert attribute(after, "structured_content")["return_value"] == "False"

            wrong = await session.call_tool("run_code", {})
            assert attribute(wrong, "is_error") is True and "code" in wrong.content[0].text
            nothing = await session.call_tool("submit", {})
            assert attribute(nothing, "is_error") is True and "task_id" in nothing.content[0].text


async def test_post_mcp_serves_the_same_tools_with_tasks_and_export():
    import httpx

    from kernelenv.server import ServerConfig, ServerThread
    from kernelenv.server.mcp_tools import TOOLS

    with ServerThread(ServerConfig(port=0, pool_size=1, no_token=True)) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:

            async def call(name, **arguments):
                request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                           "params": {"name": name, "arguments": arguments}}
                reply = (await http.post("/mcp", json=request)).json()
                assert "result" in reply, reply
                return reply["result"]

            listing = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "tools/list"})
            assert [t["name"] for t in listing.json()["result"]["tools"]] == [t.name for t in TOOLS]

            task_id = "functions_easy_palindrome"
            # Listing the tasks needs no episode.
            before = await call("list_tasks")
            assert before["isError"] is False
            assert task_id in {t["id"] for t in before["structuredContent"]["tasks"]}
            started = await call("reset", episode_id="mcp-task", task_id=task_id)
            assert started["structuredContent"]["task_id"] == task_id
            tasks = await call("list_tasks", episode_id="mcp-task")
            assert task_id in {t["id"] for t in tasks["structuredContent"]["tasks"]}
            code = (
                "def is_palindrome(text):\n"
                "    kept = [c.lower() for c in text if c.isalnum()]\n"
                "    return kept == kept[::-1]"
            )
            assert (await call("run_code", episode_id="mcp-task", code=code))["isError"] is False
            misuse = await call("submit", episode_id="mcp-task", review="looks fine")
            assert misuse["isError"] is True and "pr_review" in misuse["content"][0]["text"]
            graded = await call("submit", episode_id="mcp-task")
            assert graded["isError"] is False, graded
            assert graded["structuredContent"]["task_id"] == task_id
            assert graded["structuredContent"]["score"] == 1.0
            assert graded["structuredContent"]["passed"] is True
            exported = await call("export_episode", episode_id="mcp-task")
            sources = [c["source"] for c in exported["structuredContent"]["notebook"]["cells"]]
            assert code in sources
            assert (await http.post("/close", json={"episode_id": "mcp-task"})).status_code == 200


async def test_text_content_carries_what_an_agent_needs(tmp_path):
    """Many MCP hosts show the model only the text content: the task, the episode id, the cell."""
    from mcp import ClientSession, StdioServerParameters

    from kernelenv.tools.mcp_sdk import attribute
    from mcp.client.stdio import stdio_client

    task_id = "functions_easy_palindrome"
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "kernelenv", "mcp", "--sandbox", "none"]
    )
    with (tmp_path / "stderr.txt").open("w") as errlog:
        async with (
            stdio_client(server, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            reset = await session.call_tool("reset", {"task_id": task_id, "episode_id": "e-17"})
            text = reset.content[0].text
            prompt = attribute(reset, "structured_content")["task_description"]
            assert prompt and prompt.strip() in text
            assert "episode_id: e-17" in text and task_id in text

            cell = await session.call_tool("run_code", {"code": (
                "import sys\n"
                "print('out'); print('err', file=sys.stderr)\n"
                "from IPython.display import display, HTML\n"
                "display(HTML('<b>x</b>'))\n"
                "import matplotlib; matplotlib.use('module://matplotlib_inline.backend_inline')\n"
                "import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()\n"
                "6 * 7"
            )})
            text = cell.content[0].text
            assert "stdout:\nout" in text and "stderr:\nerr" in text
            assert "result: 42" in text
            assert "<IPython.core.display.HTML object>" in text      # display data, text/plain
            assert "image/png" in text                                # an image was produced

            failing = await session.call_tool("run_code", {"code": "def f():\n    1 / 0\nf()"})
            text = failing.content[0].text
            assert "status: error (exit code 1)" in text
            assert "ZeroDivisionError" in text and "in f" in text   # the traceback, not a name


async def test_post_mcp_reset_text_names_the_task_and_episode():
    import httpx

    from kernelenv.server import ServerConfig, ServerThread

    with ServerThread(ServerConfig(port=0, pool_size=1, no_token=True)) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "reset", "arguments": {"task_id": "functions_easy_palindrome"}}}
            result = (await http.post("/mcp", json=request)).json()["result"]
            text = result["content"][0]["text"]
            episode_id = result["structuredContent"]["episode_id"]
            assert f"episode_id: {episode_id}" in text
            assert result["structuredContent"]["task_description"].strip() in text
            assert (await http.post("/close", json={"episode_id": episode_id})).status_code == 200
