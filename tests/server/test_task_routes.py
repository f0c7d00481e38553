"""Tasks through a real server on loopback: /tasks, an episode per family, /grader."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from kernelenv import CodingEnv
from kernelenv.models import ReviewAction
from kernelenv.server import ServerConfig, ServerThread
from kernelenv.tasks.format import review_answer
from kernelenv.tasks.library import default_library
from kernelenv.wire import RICH_KEY


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(ServerConfig(port=0, pool_size=3, no_token=True)) as server:
        yield server


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield client


def test_tasks_route_lists_the_library(http):
    tasks = http.get("/tasks").json()["tasks"]
    assert [t["id"] for t in tasks] == default_library().ids()
    by_id = {t["id"]: t for t in tasks}
    assert by_id["task_hard_1"]["action"] == "review"
    assert by_id["functions_medium_intervals"] == {
        "id": "functions_medium_intervals", "version": 1, "family": "functions",
        "difficulty": "medium", "title": "Merge overlapping intervals", "action": "code",
        "limits": {"step_timeout_s": 10.0, "max_step_timeout_s": 60.0, "max_steps": 30,
                   "max_submissions": 3, "grade_timeout_s": 30.0},
    }


@pytest.mark.parametrize(
    "task_id",
    ["functions_hard_durations", "data_analysis_medium_revenue", "multi_step_hard_ledger"],
)
def test_code_family_episode_graded_through_grader(http, task_id):
    task = default_library().get(task_id)
    reset = http.post("/reset", json={"task_id": task_id}).json()
    episode_id = reset["episode_id"]
    shown = reset["observation"]["metadata"][RICH_KEY]
    assert (shown["task_id"], shown["difficulty"]) == (task_id, task.difficulty.value)
    assert shown["task_description"] == task.prompt
    # The wrong attempt first: partial credit, then the reference on a new episode.
    for cell in task.wrong:
        step = http.post("/step", json={"episode_id": episode_id, "action": {"code": cell}})
        assert step.status_code == 200 and step.json()["observation"]["exit_code"] == 0
    partial = http.get("/grader", params={"task_id": task_id, "episode_id": episode_id}).json()
    assert 0.05 < partial["score"] < 0.95 and not partial["passed"]
    assert partial["episode_id"] == episode_id and partial["components"]
    http.post("/reset", json={"task_id": task_id, "episode_id": episode_id})
    for cell in task.solution:
        http.post("/step", json={"episode_id": episode_id, "action": {"code": cell}})
    full = http.get("/grader", params={"task_id": task_id, "episode_id": episode_id}).json()
    assert full["score"] == 1.0 and full["passed"]
    assert http.get("/state", params={"episode_id": episode_id}).json()["last_score"] == 1.0
    http.post("/close", json={"episode_id": episode_id})


def test_slow_correct_step_with_a_request_budget_is_graded_with_that_budget(http):
    """A step past the task's default budget, but within the budget its request gave, counts."""
    task = default_library().get("functions_easy_palindrome")
    assert task.limits.step_timeout_s < 12 < task.limits.max_step_timeout_s
    episode_id = http.post("/reset", json={"task_id": task.id}).json()["episode_id"]
    slow = "import time\ntime.sleep(12)\n" + "\n".join(task.solution)
    step = http.post(
        "/step", json={"episode_id": episode_id, "action": {"code": slow}, "timeout_s": 20}
    )
    assert step.json()["observation"]["exit_code"] == 0
    grade = http.get("/grader", params={"task_id": task.id, "episode_id": episode_id}).json()
    assert grade["score"] == 1.0 and grade["passed"], grade["feedback"]
    http.post("/close", json={"episode_id": episode_id})


def test_review_episode_over_http(http):
    reset = http.post("/reset", json={"task_id": "task_medium_1"}).json()
    episode_id = reset["episode_id"]
    context = reset["observation"]["metadata"][RICH_KEY]["task_context"]
    assert context["pr_title"] == "Add name search to the admin user list"
    answer = review_answer(default_library().get("task_medium_1").solution[0])
    step = http.post("/step", json={"episode_id": episode_id, "action": answer}).json()
    assert 0.95 <= step["reward"] < 1.0 and step["done"]
    assert step["observation"]["metadata"][RICH_KEY]["previous_feedback"].startswith("Correct:")
    grade = http.get("/grader", params={"task_id": "task_medium_1", "episode_id": episode_id})
    assert grade.json()["score"] == step["reward"]
    http.post("/close", json={"episode_id": episode_id})


@pytest.mark.anyio
async def test_review_through_the_websocket_client_then_grader(server, http):
    async with CodingEnv(base_url=server.base_url) as env:
        result = await env.reset(task_id="task_easy_1", episode_id="ws-review")
        assert result.observation.task_context["changed_files"].startswith("app/pagination.py")
        wrong = review_answer(default_library().get("task_easy_1").wrong[0])
        result = await env.step(ReviewAction(**wrong))
        assert 0.0 < result.reward < 0.95 and not result.done
        assert "line number" in result.observation.previous_feedback
        grade = http.get("/grader", params={"task_id": "task_easy_1", "episode_id": "ws-review"})
        assert grade.json()["score"] == result.reward
        assert (await env.state()).last_score == result.reward


OPENENV_DRIVER = """
import asyncio, json, sys
from openenv.core.generic_client import GenericEnvClient

async def main():
    async with GenericEnvClient(base_url=sys.argv[1]) as env:
        reset = await env.reset(task_id="task_hard_1", episode_id="openenv-review")
        step = await env.step(json.loads(sys.argv[2]))
        print(json.dumps({"reset": reset.observation, "reward": step.reward, "done": step.done,
                          "observation": step.observation}))

asyncio.run(main())
"""


def test_openenv_generic_client_submits_a_review(openenv_python, server, http):
    answer = review_answer(default_library().get("task_hard_1").solution[0])
    run = subprocess.run(
        [str(openenv_python), "-c", OPENENV_DRIVER, server.base_url, json.dumps(answer)],
        check=False, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["reset"]["metadata"][RICH_KEY]["task_id"] == "task_hard_1"
    assert 0.95 <= report["reward"] < 1.0 and report["done"]
    assert report["observation"]["metadata"][RICH_KEY]["previous_feedback"]


def test_grader_errors_say_what_is_wrong(http):
    episode_id = http.post("/reset", json={"task_id": "task_easy_1"}).json()["episode_id"]
    mismatch = http.get("/grader", params={"task_id": "task_hard_1", "episode_id": episode_id})
    assert mismatch.status_code == 422
    assert "runs task 'task_easy_1', not 'task_hard_1'" in mismatch.json()["detail"]
    missing = http.get("/grader", params={"task_id": "task_easy_1", "episode_id": "nope"})
    assert missing.status_code == 404
    no_params = http.get("/grader")
    assert no_params.status_code == 422 and "task_id" in no_params.text
    unknown = http.post("/reset", json={"task_id": "task_easy_7"})
    assert unknown.status_code == 422 and "Did you mean 'task_easy_1'" in unknown.text
    bad_review = http.post(
        "/step", json={"episode_id": episode_id, "action": {"review": "x", "confidence": 7}}
    )
    assert bad_review.status_code == 422 and "confidence" in bad_review.text
    http.post("/close", json={"episode_id": episode_id})
