"""The TRL adapter: tool schemas as TRL builds them, and episodes driven through its methods."""

from __future__ import annotations

import inspect

import pytest

transformers_utils = pytest.importorskip("transformers.utils")

from kernelenv.integrations.trl import KernelEnvFactory, KernelToolEnv
from kernelenv.tasks.library import default_library

TASK_ID = "functions_easy_palindrome"


@pytest.fixture(scope="module")
def factory():
    with KernelEnvFactory(pool_size=2, step_timeout_s=20) as factory:
        yield factory


def trl_tool_methods(env: object) -> list:
    """The methods TRL's GRPOTrainer exposes as tools (its own discovery rule)."""
    return [
        getattr(env, name)
        for name, _ in inspect.getmembers(type(env), predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    ]


def test_tools_become_json_schemas_as_trl_builds_them(factory):
    env = factory()
    tools = trl_tool_methods(env)
    assert [tool.__name__ for tool in tools] == ["run_python"]
    schema = transformers_utils.get_json_schema(tools[0])
    function = schema["function"]
    assert function["name"] == "run_python"
    assert "persistent Jupyter kernel" in function["description"]
    assert function["parameters"]["required"] == ["code"]
    code = function["parameters"]["properties"]["code"]
    assert code["type"] == "string"
    assert code["description"].startswith("Python source code")
    assert schema["function"]["return"]["type"] == "string"
    assert callable(env.reset) and callable(env.get_reward)


def test_prompt_row_keeps_state_and_is_scored_on_its_answer(factory):
    env = factory()
    row = {"prompt": [{"role": "user", "content": "What is 6 * 7?"}], "answer": "42"}
    assert env.reset(**row) is None  # TRL already shows the row's prompt
    first = env.run_python("x = 6 * 7")
    assert first.startswith("status: ok")
    assert "42" in env.run_python("print(x)")  # state kept between tool calls
    assert env.get_reward() == 1.0

    assert env.reset(**{**row, "answer": "41"}) is None
    assert "NameError" in env.run_python("print(x)")  # a fresh kernel per episode
    env.run_python("6 * 7")
    assert env.get_reward() == 0.0


def test_rows_without_answer_score_the_last_call(factory):
    env = factory()
    env.reset(prompt="Divide by zero.")
    assert env.get_reward() == 0.0  # nothing done yet
    output = env.run_python("1 / 0")
    assert "ZeroDivisionError" in output
    assert env.get_reward() == 0.0
    env.run_python("1 / 2")
    assert env.get_reward() == 1.0


def test_task_row_returns_its_prompt_and_is_graded(factory):
    task = default_library().get(TASK_ID)
    env = factory()
    prompt = env.reset(task_id=TASK_ID, prompt=[{"role": "user", "content": ""}])
    assert prompt is not None and task.prompt.strip()[:40] in prompt
    # TRL appends it to the row's last user message: a blank line keeps the two apart.
    assert prompt.startswith("\n\n") and not prompt.startswith("\n\n\n")
    for code in task.solution:
        env.run_python(code)
    assert env.get_reward() >= 0.95

    env.reset(task_id=TASK_ID)
    env.run_python("def unrelated(): pass")
    assert env.get_reward() <= 0.05


def test_custom_reward_function_gets_the_episode_and_row():
    seen = []

    def reward(episode, row):
        seen.append((len(episode.steps), row["difficulty"]))
        return 0.25

    with KernelEnvFactory(pool_size=1, reward_fn=reward) as factory:
        env = KernelToolEnv(factory)
        env.reset(prompt="p", difficulty="hard")
        env.run_python("pass")
        assert env.get_reward() == 0.25
    assert seen == [(1, "hard")]


def test_the_class_itself_is_a_factory():
    # environment_factory=KernelToolEnv: instances share a default factory and its pool.
    try:
        first, second = KernelToolEnv(), KernelToolEnv()
        assert first._factory is second._factory is KernelEnvFactory.default()
        first.reset(prompt="p")
        second.reset(prompt="q")
        first.run_python("owner = 'first'")
        assert "NameError" in second.run_python("owner")
        assert first.get_reward() == 1.0 and second.get_reward() == 0.0
    finally:
        KernelEnvFactory.default().close()


def test_a_factory_serves_a_library_folder(imported_library):
    with KernelEnvFactory(pool_size=1, task_library=imported_library) as factory:
        env = factory()
        prompt = env.reset(task_id="humaneval_0", prompt="Solve it.")
        # The starter code is quoted in the prompt once, not repeated from the task's context.
        assert prompt.count("def add(a: int, b: int) -> int:") == 1
        env.run_python("def add(a, b):\n    return a + b")
        assert env.get_reward() == 1.0
