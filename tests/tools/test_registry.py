"""Host-side tools in the kernel: stubs, recording, errors, timeouts, file confinement."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import threading

import pytest

from kernelenv import KernelEnv, StepStatus, ToolContext, ToolRegistry
from kernelenv.tools.files import add_file_tools

pytestmark = pytest.mark.anyio

HOST_PID = os.getpid()


def make_registry() -> ToolRegistry:
    registry = add_file_tools(ToolRegistry())

    @registry.register
    def host_pid() -> int:
        """The pid of the process running the tool."""
        return os.getpid()

    @registry.register(name="describe")
    def describe_episode(label: str, *, upper: bool = False, context: ToolContext) -> dict:
        """Describe the episode this call serves."""
        text = label.upper() if upper else label
        return {"label": text, "episode_id": context.episode_id, "thread": threading.get_ident()}

    @registry.register
    async def slow_echo(text: str, delay_s: float = 0.0) -> str:
        """Echo after a delay (an async tool)."""
        await asyncio.sleep(delay_s)
        return text

    class QuotaExceeded(Exception):
        """An error class the kernel does not know."""

    @registry.register
    def fail(kind: str) -> None:
        """Raise the named error."""
        if kind == "value":
            raise ValueError("bad value")
        raise QuotaExceeded("custom failure")

    @registry.register
    def not_json() -> object:
        return object()

    return registry


@pytest.fixture(scope="module")
async def tool_env(shared_pool):
    async with KernelEnv(pool=shared_pool, tools=make_registry(), step_timeout_s=10) as env:
        yield env


async def test_tools_run_on_the_host_and_calls_are_recorded(tool_env):
    reset = await tool_env.reset()
    observation = await tool_env.step(
        "import os\n"
        "info = describe('hello', upper=True)\n"
        "print(host_pid() != os.getpid(), info['label'], info['episode_id'])\n"
        "host_pid()"
    )
    episode_id = reset.metadata["episode_id"]
    assert observation.status is StepStatus.OK, observation.error
    assert observation.stdout == f"True HELLO {episode_id}\n"
    assert observation.return_value == str(HOST_PID)
    calls = observation.metadata["tool_calls"]
    assert [c["tool"] for c in calls] == ["describe", "host_pid", "host_pid"]
    assert calls[0]["arguments"] == {"label": "hello", "upper": True}
    assert calls[0]["result"]["episode_id"] == episode_id
    # A sync tool ran in a worker thread, not on the event loop's thread.
    assert calls[0]["result"]["thread"] != threading.get_ident()
    assert all(c["ok"] and c["duration_s"] >= 0 for c in calls)
    quiet = await tool_env.step("1 + 1")
    assert quiet.metadata["tool_calls"] == []


async def test_stubs_look_like_plain_functions(tool_env):
    await tool_env.reset()
    observation = await tool_env.step(
        "import inspect\n"
        "print(inspect.signature(describe))\n"
        "print(inspect.signature(slow_echo))\n"
        "print(describe.__name__, describe.__doc__)\n"
        "print(callable(file_read), 'context' in str(inspect.signature(file_list)))\n"
        "try:\n"
        "    input('agent input is still refused at once: ')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)"
    )
    assert observation.stdout.splitlines() == [
        "(label, *, upper=False)",
        "(text, delay_s=0.0)",
        "describe Describe the episode this call serves.",
        "True False",
        "StdinNotImplementedError",
    ]


async def test_tool_errors_are_raised_in_agent_code(tool_env):
    await tool_env.reset()
    observation = await tool_env.step(
        "caught = []\n"
        "for attempt in (lambda: fail('value'), lambda: fail('other'), lambda: describe(),\n"
        "                lambda: describe('x', colour='red'), lambda: slow_echo(object()),\n"
        "                lambda: not_json()):\n"
        "    try:\n"
        "        attempt()\n"
        "    except ToolError as exc:\n"
        "        caught.append(('ToolError', str(exc)))\n"
        "    except Exception as exc:\n"
        "        caught.append((type(exc).__name__, str(exc)))\n"
        "caught"
    )
    assert observation.status is StepStatus.OK, observation.error
    caught = ast.literal_eval(observation.return_value)
    assert caught[0] == ("ValueError", "bad value")
    assert caught[1] == ("ToolError", "QuotaExceeded: custom failure")
    assert caught[2][0] == "TypeError" and "label" in caught[2][1]
    assert caught[3][0] == "TypeError" and "colour" in caught[3][1]
    assert caught[4][0] == "TypeError" and "JSON" in caught[4][1]  # refused in the kernel
    assert caught[5][0] == "ToolError" and "not JSON" in caught[5][1]
    recorded = observation.metadata["tool_calls"]
    # The argument refused in the kernel never reached the host.
    assert [(c["tool"], c["ok"], c["error_type"]) for c in recorded] == [
        ("fail", False, "ValueError"),
        ("fail", False, "QuotaExceeded"),
        ("describe", False, "TypeError"),
        ("describe", False, "TypeError"),
        ("not_json", False, "ToolError"),
    ]


async def test_a_slow_tool_call_is_interrupted_by_the_step_timeout(tool_env):
    await tool_env.reset()
    stuck = await tool_env.step("slow_echo('late', delay_s=30)", timeout_s=1)
    assert stuck.status is StepStatus.TIMEOUT
    assert stuck.kernel_restarted is False
    after = await tool_env.step("slow_echo('still works')")
    assert after.return_value == "'still works'"
    # The abandoned call was cancelled on the host, not left running for nobody.
    calls = stuck.metadata["tool_calls"] + after.metadata["tool_calls"]
    cancelled = [c for c in calls if c["error_type"] == "Interrupted"]
    assert len(cancelled) == 1 and cancelled[0]["tool"] == "slow_echo"


async def test_unfinished_request_lines_cannot_pile_up_on_the_host(tool_env):
    from kernelenv.tools.bridge import MAX_CONCURRENT_CALLS, SOCKET_NAME

    await tool_env.reset()
    bridge = tool_env._tool_bridge
    path = str(tool_env.kernel.run_dir / SOCKET_NAME)
    # Agent code opens many connections to the tool socket, each with half a request line.
    opened = await tool_env.step(
        "import socket\nheld = []\n"
        "for _ in range(50):\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(" + repr(path) + ")\n"
        "    try:\n"
        "        s.sendall(b'{\"tool\": \"echo\", ' + b'x' * 60000)\n"
        "    except OSError:\n"
        "        pass  # refused and closed before the half line was all sent\n"
        "    held.append(s)\n"
        "refused = 0\n"
        "for s in held:\n"
        "    s.settimeout(0.5)\n"
        "    try:\n"
        "        refused += b'at once' in s.recv(4096)\n"
        "    except TimeoutError:\n"
        "        pass\n"
        "refused"
    )
    assert opened.error is None, opened.error
    assert int(opened.return_value) == 50 - MAX_CONCURRENT_CALLS  # the rest got a refusal
    assert len(bridge._handlers) <= MAX_CONCURRENT_CALLS
    released = await tool_env.step("for s in held: s.close()\nheld.clear()")
    assert released.error is None
    assert (await tool_env.step("slow_echo('served')")).return_value == "'served'"


async def test_tools_come_back_after_the_kernel_is_replaced(tool_env):
    await tool_env.reset()
    died = await tool_env.step("import os; os._exit(1)")
    assert died.status is StepStatus.KERNEL_DIED
    observation = await tool_env.step("host_pid()")
    assert observation.kernel_restarted is True
    assert observation.return_value == str(HOST_PID)


async def test_calls_from_agent_threads_are_served(tool_env):
    await tool_env.reset()
    observation = await tool_env.step(
        "from concurrent.futures import ThreadPoolExecutor\n"
        "with ThreadPoolExecutor(8) as pool:\n"
        "    echoes = list(pool.map(lambda i: slow_echo(str(i), 0.05), range(16)))\n"
        "echoes == [str(i) for i in range(16)]"
    )
    assert observation.return_value == "True", observation.error
    assert len(observation.metadata["tool_calls"]) == 16


async def test_file_tools_are_confined_to_the_episode(tool_env, tmp_path):
    await tool_env.reset()
    host_file = tmp_path / "secret.txt"
    host_file.write_text("host secret")
    observation = await tool_env.step(
        "file_write('/notes/a.txt', 'one')\n"
        "file_write('b.txt', 'two')\n"
        "listing = (file_list(), file_list('/notes'))\n"
        "errors = []\n"
        f"for path in ('../../etc/passwd', {str(host_file)!r}, '/missing.txt'):\n"
        "    try:\n"
        "        file_read(path)\n"
        "    except OSError as exc:\n"
        "        errors.append((type(exc).__name__, str(exc)))\n"
        "listing, errors"
    )
    assert observation.status is StepStatus.OK, observation.error
    listing, errors = ast.literal_eval(observation.return_value)
    assert listing == (["b.txt", "notes/"], ["a.txt"])
    assert errors[0][0] == "PermissionError"
    # The host's absolute path is read inside the episode's files, where it does not exist.
    assert errors[1][0] == "FileNotFoundError" and str(host_file) in errors[1][1]
    assert errors[2] == ("FileNotFoundError", "[Errno 2] No such file or directory: '/missing.txt'")
    assert "kernelenv-" not in json.dumps(errors)  # no host path leaks to the agent
    # Big contents reach the agent whole but are recorded as previews.
    big = await tool_env.step("len(file_read('/big.txt')) if file_write('/big.txt', 'x' * 10000) else 0")
    assert big.return_value == "10000"
    write, read = big.metadata["tool_calls"]
    assert write["arguments"]["content"].endswith("... [10000 characters]")
    assert read["result_truncated"] is True and len(read["result"]) < 10000
    # A new episode starts with no files.
    await tool_env.reset()
    fresh = await tool_env.step("file_list()")
    assert fresh.return_value == "[]"


def test_registry_rejects_duplicates_and_bad_names():
    registry = ToolRegistry()
    registry.register(lambda: 1, name="one")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(lambda: 2, name="one")
    with pytest.raises(ValueError, match="not a Python identifier"):
        registry.register(lambda: 3, name="two words")
    assert registry.names == ["one"] and "one" in registry and len(registry) == 1


async def test_a_step_records_at_most_so_many_calls_and_no_big_arguments(tool_env):
    """Recorded calls stay in the episode's history: an agent calling in a loop, or passing
    a large structure (25 MB once decoded from 1.8 MB of JSON), cannot fill it with them."""
    obs = await tool_env.step(
        "for _ in range(1005):\n"
        "    slow_echo('x')\n"
        "describe([[]] * 10000)"
    )
    assert obs.status is StepStatus.OK, obs.stderr
    calls = obs.metadata["tool_calls"]
    assert len(calls) == 1000 and obs.metadata["tool_calls_not_recorded"] == 6
    big = await tool_env.step("describe([[]] * 10000)")
    (call,) = big.metadata["tool_calls"]
    assert call["arguments"]["label"].startswith("[a list of about ")
    assert "tool_calls_not_recorded" not in big.metadata
