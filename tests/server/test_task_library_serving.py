"""``kernelenv serve --tasks DIR``: an imported library served to OpenEnv's published client,
graded through ``/grader``, listed by ``/tasks`` and MCP, and hidden from agent code."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from local_server import start_plain_server, stop

from kernelenv.sandbox.config import bwrap_available
from kernelenv.tasks.library import TaskLibrary

DRIVER = '''
import asyncio, json, sys, urllib.parse, urllib.request
from openenv.core.generic_client import GenericEnvClient

async def main(base_url, task_id, code, path):
    async with GenericEnvClient(base_url=base_url) as env:
        reset = await env.reset(task_id=task_id, episode_id="library-episode")
        step = await env.step({"code": code})
        peek = await env.step({"code": f"open({path!r}).read()[:20]"})
        # /grader while the WebSocket session (and so the episode) is alive.
        query = urllib.parse.urlencode({"task_id": task_id, "episode_id": "library-episode"})
        with urllib.request.urlopen(f"{base_url}/grader?{query}", timeout=120) as reply:
            grade = json.loads(reply.read())
    print(json.dumps({
        "grade": grade,
        "prompt": reset.observation["metadata"]["kernelenv"]["task_description"],
        "exit_code": step.observation["exit_code"],
        "peek": peek.observation["metadata"]["kernelenv"],
    }))

asyncio.run(main(*sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def served(imported_library, tmp_path_factory) -> Iterator[str]:
    runtime = tmp_path_factory.mktemp("runtime")
    process, info = start_plain_server(
        runtime, "--pool-size", "2", "--no-token", "--tasks", str(imported_library)
    )  # fmt: skip
    try:
        yield info["url"]
    finally:
        output = stop(process)
    assert "serving 4 tasks from" in output


def test_tasks_and_mcp_list_the_served_library(served, imported_library):
    listed = [t["id"] for t in httpx.get(served + "/tasks").json()["tasks"]]
    assert listed == TaskLibrary(imported_library).ids()
    reply = httpx.post(served + "/mcp", json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "list_tasks", "arguments": {}},
    }).json()
    assert [t["id"] for t in reply["result"]["structuredContent"]["tasks"]] == listed


def test_openenv_client_runs_a_served_task_graded_by_grader(
    served, imported_library, openenv_python: Path, tmp_path
):
    task = TaskLibrary(imported_library).get("humaneval_0")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run = subprocess.run(
        [str(openenv_python), str(driver), served, task.id, task.solution[0],
         str(imported_library / "humaneval_0.ipynb")],
        capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["prompt"] == task.prompt and report["exit_code"] == 0
    grade = report["grade"]
    assert grade["score"] == 1.0 and grade["passed"] and "4/4" in grade["feedback"]
    # The library folder holds the answer keys: a contained kernel must not read it.
    if bwrap_available():  # the default level, auto, is then bwrap
        assert report["peek"]["status"] == "error", report["peek"]
        assert "kernelenv" not in (report["peek"]["return_value"] or "")


def test_serve_refuses_a_missing_tasks_folder(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "kernelenv", "serve", "--no-token", "--tasks", str(tmp_path / "nope"),
         "--port", "0", "--no-journal"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2 and "no such folder of task notebooks" in run.stderr
