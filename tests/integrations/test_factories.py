"""Seed 004's code blocks, run as written with only the import line changed.

Where a block is a fragment (it uses ``env`` or ``CodeAction`` from an earlier block, or calls
a placeholder such as ``generate_action()``), the test first provides that context with small
real definitions; the block's own lines are unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kernelenv import CodeObservation, Transform


def test_quick_start(no_leaks, capsys):
    from kernelenv import create_codeact_env, CodeAction  # noqa: I001 - the seed's line

    # Create environment
    env = create_codeact_env()
    try:
        obs = env.reset()

        # Execute Python code
        action = CodeAction(code="""
x = 10
y = 20
result = x * y
print(f"Result: {result}")
result  # Return value
""")

        obs = env.step(action)
        print(f"Output: {obs.execution_result.stdout}")
        print(f"Return: {obs.execution_result.return_value}")
    finally:
        env.close()
    assert capsys.readouterr().out == "Output: Result: 200\n\nReturn: 200\n"


def test_actions_and_observations(no_leaks, capsys):
    from kernelenv import CodeAction, create_codeact_env

    env = create_codeact_env()
    env.step(CodeAction(code="import math"))  # context: the seed's env has math imported
    try:
        # Actions contain arbitrary Python code
        action = CodeAction(code="math.sqrt(16)")

        # Observations include execution results
        obs = env.step(action)
        print(obs.execution_result.return_value)  # 4.0
        print(obs.execution_result.success)       # True
        print(obs.execution_result.stdout)        # Any print output
    finally:
        env.close()
    assert capsys.readouterr().out == "4.0\nTrue\n\n"


def test_tool_integration(no_leaks, capsys):
    from kernelenv import CodeAction  # context: imported by the Quick Start block

    host_file = Path("/tmp/hello.txt")
    before = host_file.read_bytes() if host_file.exists() else None

    from kernelenv import create_mcp_environment

    # Environment with MCP tools
    env = create_mcp_environment()
    try:
        obs = env.reset()

        # Tools available as Python objects
        action = CodeAction(code="""
content = "Hello, world!"
file_write("/tmp/hello.txt", content)
result = file_read("/tmp/hello.txt")
print(f"File contents: {result}")
""")

        obs = env.step(action)
    finally:
        env.close()
    assert obs.stdout == "File contents: Hello, world!\n"
    calls = obs.metadata["tool_calls"]
    assert [(c["tool"], c["ok"]) for c in calls] == [("file_write", True), ("file_read", True)]
    assert calls[1]["result"] == "Hello, world!"
    # The file went to the episode's own host directory, not the host's /tmp.
    after = host_file.read_bytes() if host_file.exists() else None
    assert after == before


def test_rl_training_with_transforms(no_leaks, capsys):
    from kernelenv import CodeAction, create_codeact_env  # noqa: I001 - context: Quick Start

    from kernelenv import create_math_env_transform

    # Environment that rewards correct math solutions
    transform = create_math_env_transform(expected_answer=42)
    env = create_codeact_env()
    try:
        env.transform = transform

        # Agent gets rewarded for correct answers
        action = CodeAction(code="21 * 2")  # Correct answer
        obs = env.step(action)
        print(obs.reward)  # 1.0 (success) + quality bonuses
    finally:
        env.close()
    quality = transform.transforms[-1]
    assert obs.reward == pytest.approx(1.0 + quality.max_bonus)  # the full reward
    assert obs.metadata["rewards"] == {
        "safety": 0.0, "math": 1.0, "quality": pytest.approx(quality.max_bonus)
    }
    assert float(capsys.readouterr().out) == pytest.approx(1.2)


def test_agent_exploration(no_leaks):
    from kernelenv import CodeAction, create_codeact_env  # context: the Quick Start's imports

    env = create_codeact_env()
    try:
        obs = env.reset()

        # Multi-step problem solving
        action1 = CodeAction(code="data = [1, 2, 3, 4, 5]")
        obs = env.step(action1)

        action2 = CodeAction(code="mean = sum(data) / len(data); mean")
        obs = env.step(action2)  # Uses persistent data from step 1
    finally:
        env.close()
    assert obs.return_value == "3.0"


@pytest.mark.slow  # 100 episodes are 100 fresh kernels: about 30 s on an idle 2-core machine
def test_rl_training_loop(no_leaks):
    from kernelenv import CodeAction, create_codeact_env, create_safe_env_transform

    policy_actions = [
        "sum(range(10))",
        "import os\nos.system('echo hi')",
        "1 / 0",
    ]
    rewards: list[float] = []

    def generate_action():  # context: the seed's placeholder policy
        return CodeAction(code=policy_actions[len(rewards) % len(policy_actions)])

    # Create environment with reward function
    transform = create_safe_env_transform()
    env = create_codeact_env()
    env.transform = transform

    try:
        for episode in range(100):
            obs = env.reset()
            action = generate_action()  # From your policy
            obs = env.step(action)

            reward = obs.reward  # Computed by transforms
            # Update policy based on reward
            rewards.append(reward)
    finally:
        env.close()
    assert len(rewards) == 100
    # clean and short: +0.2; unsafe: -1.0 + 0.2; failing: -0.1 + 0.1
    assert rewards[:3] == pytest.approx([0.2, -0.8, 0.0])
    assert rewards[3:6] == pytest.approx(rewards[:3])


def test_hybrid_agent_and_rl(no_leaks):
    from kernelenv import CodeAction, create_codeact_env  # context: the Quick Start's imports

    class ShortCodeTransform(Transform):
        """A small real optimization_transform: rewards shorter code that succeeds."""

        name = "brevity"

        def __call__(self, observation: CodeObservation) -> CodeObservation:
            code = observation.metadata.get("last_code", "")
            observation.reward = 1.0 / (1 + len(code)) if observation.success else -1.0
            return observation

    optimization_transform = ShortCodeTransform()

    # Phase 1: Agent exploration
    env = create_codeact_env()
    try:
        # Agent explores different solution approaches
        explored = [env.step(CodeAction(code=c)).return_value for c in ("sum([1, 2, 3])", "6")]

        # Phase 2: RL optimization
        env.transform = optimization_transform
        # Train to optimize based on exploration insights
        trained = env.step(CodeAction(code="6"))
    finally:
        env.close()
    assert explored == ["6", "6"]
    assert trained.reward == pytest.approx(0.5)

