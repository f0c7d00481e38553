"""The Gymnasium wrapper: Gymnasium's own env checker, and episodes through gymnasium.make."""

from __future__ import annotations

import pytest

gymnasium = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env

from kernelenv.integrations.gym import ENV_ID, KernelGymEnv
from kernelenv.tasks.library import default_library


def test_gymnasium_check_env_passes(no_leaks):
    env = gymnasium.make(ENV_ID)
    try:
        # The raw env (as the checker asks), with the spec make() gave it: the checker then
        # also makes and closes fresh instances, one per render mode.
        check_env(env.unwrapped)
    finally:
        env.close()


def test_episode_through_gymnasium_make(no_leaks):
    env = gymnasium.make(ENV_ID, max_episode_steps=3, render_mode="ansi")
    try:
        observation, info = env.reset(seed=7)
        assert observation == ""
        assert info["status"] == "ok" and info["episode_id"]
        observation, reward, terminated, truncated, info = env.step("x = 'café'; print(x)")
        assert observation == "status: ok (exit code 0)\nstdout:\ncaf\\xe9"
        assert observation in env.observation_space
        assert (reward, terminated, truncated) == (0.0, False, False)
        observation, *_ = env.step("len(x)")  # state kept between steps
        assert observation.endswith("result: 4")
        assert env.render() == observation
        observation, _, _, truncated, info = env.step("1 / 0")
        assert "ZeroDivisionError" in observation
        assert info["exit_code"] == 1 and info["error"]["ename"] == "ZeroDivisionError"
        assert truncated  # Gymnasium's TimeLimit, from max_episode_steps
    finally:
        env.close()


def test_long_output_is_cut_to_the_space(no_leaks):
    env = KernelGymEnv(max_observation_chars=200)
    try:
        env.reset()
        observation, *_ = env.step("print('y' * 1000)")
        assert len(observation) == 200
        assert observation.endswith("[... output truncated]")
        assert observation in env.observation_space
    finally:
        env.close()
        env.close()  # safe twice


def test_task_episode_shows_the_prompt_and_rewards_a_solution(no_leaks):
    task = default_library().get("functions_easy_palindrome")
    env = KernelGymEnv()
    try:
        observation, info = env.reset(options={"task_id": task.id})
        assert task.prompt.strip()[:40] in observation
        assert info["task_id"] == task.id
        for code in task.solution:
            observation, *_ = env.step(code)
            assert observation.startswith("status: ok"), observation
        assert env.kernel_env.grade().score >= 0.95
    finally:
        env.close()


def test_unknown_render_mode_is_refused():
    with pytest.raises(ValueError, match="render_mode"):
        KernelGymEnv(render_mode="human")


def test_a_library_folder_reaches_the_gym_env(imported_library):
    import gymnasium

    import kernelenv.integrations.gym  # noqa: F401

    env = gymnasium.make("kernelenv/Python-v0", task_library=str(imported_library))
    try:
        observation, _ = env.reset(options={"task_id": "mbpp_12"})
        assert "min_max" in observation
        env.step("def min_max(xs):\n    return min(xs), max(xs)")
        assert env.unwrapped.kernel_env.grade().score == 1.0
    finally:
        env.close()
