"""The blocking facade: plain scripts, inside a running event loop (as in Jupyter), seed 004."""

from __future__ import annotations

import asyncio

import pytest

from kernelenv import CodeAction, EnvClosedError, KernelEnv, StepStatus, create_codeact_env


def test_blocking_facade_runs_an_episode(no_leaks):
    with KernelEnv().sync() as env:
        env.reset(episode_id="sync-1")
        assert env.step(CodeAction(code="x = 2")).status is StepStatus.OK
        assert env.step("x ** 10").return_value == "1024"
        assert env.state.episode_id == "sync-1"
        assert env.state.step_count == 2
    with pytest.raises(EnvClosedError):
        env.step("1")
    env.close()  # twice is fine


def test_blocking_facade_inside_a_running_event_loop(no_leaks):
    """Jupyter runs cells inside its event loop; the facade must not need that loop."""

    async def notebook_cell() -> str:
        asyncio.get_running_loop()  # we really are inside a running loop here
        with KernelEnv().sync() as env:
            env.reset()
            return env.step("print('inside'); 6 * 7").return_value

    assert asyncio.run(notebook_cell()) == "42"


def test_create_codeact_env_passes_options(no_leaks):
    with create_codeact_env(step_timeout_s=0.5) as env:
        env.reset()
        assert env.step("import time; time.sleep(5)").status is StepStatus.TIMEOUT


def test_forked_twins_close_in_either_order(no_leaks):
    """A child closed after its parent (whose loop it shared) has nothing left to close."""
    parent = KernelEnv().sync()
    parent.reset()
    first, second = parent.fork(2)
    first.close()                    # before the parent: closed on the shared loop
    parent.close()                   # stops the loop and the kernels of its pool
    second.close()                   # after: nothing left to do, no error
    with pytest.raises(EnvClosedError):
        second.step("1")
