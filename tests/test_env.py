"""KernelEnv on real kernels: persistence, isolation, rich outputs, budgets and recovery."""

from __future__ import annotations

import os
import random
from pathlib import Path

import psutil
import pytest

from kernelenv import CodeAction, EnvClosedError, KernelEnv, ResetNeeded, StepStatus

pytestmark = pytest.mark.anyio


@pytest.fixture
async def env(shared_pool):
    async with KernelEnv(pool=shared_pool, step_timeout_s=10) as env:
        await env.reset()
        yield env


async def test_state_persists_across_steps(env):
    obs = await env.step(CodeAction(code="x = 5 + 3\nprint(f'Result: {x}')"))
    assert obs.stdout == "Result: 8\n"
    assert obs.exit_code == 0 and obs.status is StepStatus.OK
    obs = await env.step("x * 2")
    assert obs.return_value == "16"
    assert env.state.step_count == 2
    assert env.state.last_exit_code == 0


async def test_reset_gives_a_fresh_kernel_and_working_directory(env):
    await env.step("secret = 42; open('note.txt', 'w').write('hi')")
    await env.step("import os")
    # The host-side pid: inside a bwrap sandbox every kernel is PID 2 of its own namespace.
    first_pid = env.kernel.pid
    first_dir = Path(eval((await env.step("os.getcwd()")).return_value))
    assert (first_dir / "note.txt").exists()
    await env.reset()
    obs = await env.step("secret")
    assert obs.status is StepStatus.ERROR and obs.error.ename == "NameError"
    assert env.kernel.pid != first_pid
    await env.step("import os")
    second_dir = Path(eval((await env.step("os.getcwd()")).return_value))
    assert second_dir != first_dir
    assert (await env.step("import os; os.path.exists('note.txt')")).return_value == "False"
    assert env.state.step_count == 4  # counts restart with the episode


async def test_old_working_directory_is_removed_after_reset(env):
    old_dir = Path(eval((await env.step("import os; os.getcwd()")).return_value))
    await env.reset()
    for _ in range(100):
        if not old_dir.exists():
            break
        import anyio

        await anyio.sleep(0.05)
    assert not old_dir.exists()


async def test_reset_honours_episode_id_and_seed(shared_pool):
    async with KernelEnv(pool=shared_pool) as env:
        obs = await env.reset(episode_id="my-episode", seed=7)
        assert env.state.episode_id == "my-episode"
        assert obs.metadata["episode_id"] == "my-episode"
        drawn = (await env.step("import random; random.random()")).return_value
        assert float(drawn) == random.Random(7).random()
        await env.reset()
        assert env.state.episode_id != "my-episode"


async def test_rich_outputs_html_png_and_display_updates(env):
    obs = await env.step(
        "from IPython.display import HTML, display\n"
        "display(HTML('<b>bold</b>'))\n"
        "h = display('0%', display_id=True)\n"
        "h.update('100%')\n"
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3]); plt.show()"
    )
    assert obs.status is StepStatus.OK, obs.stderr
    kinds = [o["output_type"] for o in obs.outputs]
    assert kinds.count("display_data") == 3
    assert obs.outputs[0]["data"]["text/html"] == "<b>bold</b>"
    assert obs.outputs[1]["data"]["text/plain"] == "'100%'"
    png = obs.outputs[2]["data"]["image/png"]
    import base64

    assert base64.b64decode(png).startswith(b"\x89PNG")


async def test_errors_are_observations_with_plain_tracebacks(env):
    obs = await env.step("def f():\n    return 1 / 0\nf()")
    assert obs.status is StepStatus.ERROR
    assert obs.exit_code == 1
    assert obs.error.ename == "ZeroDivisionError"
    assert obs.error.evalue == "division by zero"
    text = "\n".join(obs.error.traceback)
    assert "\x1b[" not in text and "1 / 0" in text
    assert "ZeroDivisionError" in obs.stderr
    assert obs.outputs[-1]["output_type"] == "error"
    # the episode goes on
    assert (await env.step("1 + 1")).return_value == "2"


async def test_syntax_error(env):
    obs = await env.step("def (:")
    assert obs.status is StepStatus.ERROR and obs.error.ename == "SyntaxError"


async def test_return_value_only_for_an_expression(env):
    assert (await env.step("y = 3")).return_value is None
    assert (await env.step("y")).return_value == "3"
    assert (await env.step("None")).return_value is None
    assert (await env.step("'text'")).return_value == "'text'"


async def test_input_fails_at_once(env):
    obs = await env.step("name = input('name? ')")
    assert obs.status is StepStatus.ERROR
    assert obs.error.ename == "StdinNotImplementedError"  # at once: not a timeout


async def test_timeout_interrupts_and_keeps_state(env):
    await env.step("kept = 'yes'")
    obs = await env.step(CodeAction(code="import time\ntime.sleep(30)", timeout_s=0.5))
    assert obs.status is StepStatus.TIMEOUT
    assert obs.exit_code == 124
    assert obs.error.ename == "TimeoutError"
    assert obs.metadata["kernel_replaced"] is False
    after = await env.step("kept")
    assert after.return_value == "'yes'"
    assert after.kernel_restarted is False


async def test_timeout_that_ignores_sigint_replaces_the_kernel(env):
    await env.step("kept = 'yes'")
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('started', flush=True)\n"
        "while True:\n"
        "    time.sleep(0.01)\n"
    )
    obs = await env.step(code, timeout_s=0.5)
    assert obs.status is StepStatus.TIMEOUT
    assert obs.metadata["kernel_replaced"] is True
    assert "replaced" in obs.error.evalue
    assert obs.stdout == "started\n"
    after = await env.step("'kept' in globals()")
    assert after.kernel_restarted is True
    assert after.return_value == "False"
    assert (await env.step("1")).kernel_restarted is False


async def test_kernel_death_is_an_observation_and_the_episode_recovers(env):
    await env.step("kept = 1")
    obs = await env.step("import os\nos._exit(3)")
    assert obs.status is StepStatus.KERNEL_DIED
    assert obs.exit_code == 137
    assert obs.error.ename == "KernelDied"
    assert obs.metadata["kernel_exit_code"] == 3
    after = await env.step("'kept' in globals()")
    assert after.kernel_restarted is True
    assert after.status is StepStatus.OK
    assert after.return_value == "False"


async def test_segfault_is_kernel_died(env):
    obs = await env.step("import ctypes\nctypes.string_at(0)")
    assert obs.status is StepStatus.KERNEL_DIED
    assert "SIGSEGV" in obs.error.evalue
    assert (await env.step("2 + 2")).return_value == "4"


async def test_code_that_breaks_the_kernels_messaging_is_an_observation(env):
    """Patching what the kernel serialises its messages with must not crash the env."""
    await env.step("kept = 1")
    obs = await env.step("import json\njson.dumps = lambda *a, **k: '{}'")
    assert obs.status is StepStatus.KERNEL_DIED
    assert obs.error.ename == "KernelProtocolError"
    assert "json.dumps" in obs.error.evalue
    after = await env.step("'kept' in globals()")
    assert after.kernel_restarted is True
    assert after.return_value == "False"


async def test_output_flood_is_truncated_and_the_step_finishes(shared_pool):
    async with KernelEnv(pool=shared_pool, max_output_bytes=10_000, step_timeout_s=30) as env:
        await env.reset()
        obs = await env.step("for i in range(200_000):\n    print('line', i)\n'done'")
        assert obs.status is StepStatus.OK
        assert obs.output_truncated is True
        assert "output truncated" in obs.stdout
        assert len(obs.stdout.encode()) < 11_000
        assert obs.return_value == "'done'"
        assert (await env.step("print('small')")).stdout == "small\n"


async def test_request_id_makes_a_retry_return_the_recorded_observation(env):
    await env.step("n = 0")
    first = await env.step(CodeAction(code="n += 1; n", request_id="r1"))
    again = await env.step(CodeAction(code="n += 1; n", request_id="r1"))
    assert first.return_value == again.return_value == "1"
    assert (await env.step("n")).return_value == "1"
    assert env.state.step_count == 3


async def test_a_retry_racing_its_original_waits_for_its_observation(env):
    import anyio

    code = CodeAction(code="import time; runs = globals().get('runs', 0) + 1; time.sleep(1); runs",
                      request_id="race")
    results = []

    async def step() -> None:
        results.append(await env.step(code))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(step)
        tasks.start_soon(step)  # sent before the first one finished
    assert [r.return_value for r in results] == ["1", "1"]
    assert env.state.step_count == 1


async def test_close_during_a_step_interrupts_it_before_releasing_the_kernel(shared_pool):
    import anyio

    env = KernelEnv(pool=shared_pool, step_timeout_s=120)
    await env.reset()
    results = []

    async def step() -> None:
        results.append(await env.step("import time\nfor _ in range(1200): time.sleep(0.1)"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(step)
        with anyio.fail_after(60):
            while not env._step_lock().locked():
                await anyio.sleep(0.01)
        await env.close()
        assert env.kernel is None  # released only once the step gave its observation
    # Interrupted, or (on a machine too busy for the interrupts to land in time) killed.
    assert results[0].status in (StepStatus.ERROR, StepStatus.KERNEL_DIED), results[0]
    assert results[0].status is StepStatus.KERNEL_DIED or "KeyboardInterrupt" in results[0].stderr


async def test_a_budget_above_the_maximum_is_cut(shared_pool):
    async with KernelEnv(pool=shared_pool, step_timeout_s=1, max_step_timeout_s=2) as env:
        await env.reset()
        slow = await env.step(CodeAction(code="import time; time.sleep(30)", timeout_s=999))
        assert slow.status is StepStatus.TIMEOUT
        assert slow.metadata["step_timeout_clamped"] == {"requested_s": 999,
                                                         "max_step_timeout_s": 2}
        fast = await env.step(CodeAction(code="1", timeout_s=2))
        assert "step_timeout_clamped" not in fast.metadata
    with pytest.raises(ValueError, match="max_step_timeout_s"):
        KernelEnv(pool=shared_pool, step_timeout_s=5, max_step_timeout_s=2)


async def test_invalid_episode_ids_are_refused(env):
    from kernelenv.errors import InvalidEpisodeIdError

    for bad in ["", "a b", "a/b", ".x", "x" * 129]:
        with pytest.raises(InvalidEpisodeIdError):
            await env.reset(episode_id=bad)
    assert (await env.reset(episode_id="épisode.1")).metadata["episode_id"] == "épisode.1"


async def test_step_before_reset_and_after_close(shared_pool):
    env = KernelEnv(pool=shared_pool)
    with pytest.raises(ResetNeeded):
        await env.step("1")
    assert env.state.episode_id is None
    await env.close()
    await env.close()  # twice is fine
    with pytest.raises(EnvClosedError):
        await env.reset()


async def test_step_rejects_non_code(env):
    from kernelenv import InvalidActionError

    with pytest.raises(InvalidActionError):
        await env.step(42)


async def test_background_thread_output_is_reported_as_late_output(env):
    await env.step(
        "import threading, time\n"
        "def later():\n    time.sleep(0.3); print('from thread', flush=True)\n"
        "threading.Thread(target=later).start()"
    )
    import anyio

    await anyio.sleep(0.8)
    obs = await env.step("1")
    late = obs.metadata.get("late_output", [])
    assert any("from thread" in item["content"].get("text", "") for item in late)
    assert "from thread" not in obs.stdout


async def test_close_leaves_no_kernel_process_and_no_files(no_leaks):
    async with KernelEnv(pool_size=1) as env:
        await env.reset()
        # Host-side pids of the kernel and its wrappers (a sandbox has its own PID namespace).
        outer = psutil.Process(env.kernel.pid)
        pids = [outer.pid] + [p.pid for p in outer.children(recursive=True)]
        root = env.pool.root
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not root.exists()


async def test_an_env_can_be_used_without_a_context_manager(no_leaks):
    env = KernelEnv(pool_size=0)
    try:
        await env.reset()
        assert (await env.step("40 + 2")).return_value == "42"
    finally:
        await env.close()


async def test_kernel_runs_with_agent_friendly_settings(env):
    obs = await env.step(
        "import os, matplotlib\n"
        "from IPython import get_ipython\n"
        "ip = get_ipython()\n"
        "print(matplotlib.get_backend())\n"
        "print(ip.history_manager.hist_file)\n"
        "print(ip.colors)"
    )
    backend, hist, colors = obs.stdout.split()
    assert "inline" in backend
    assert hist == ":memory:"
    assert colors.lower() == "nocolor"
    assert os.path.basename(eval((await env.step("os.getcwd()")).return_value)) == "work"


async def test_an_episode_past_its_history_cap_refuses_steps_until_reset(shared_pool):
    """An agent printing a lot every step cannot grow the episode's memory without end."""
    async with KernelEnv(pool=shared_pool, max_history_bytes=200_000) as env:
        await env.reset()
        # Each step keeps its 30 kB twice: in stdout and in its stream output.
        observations = [await env.step("print('x' * 30_000)") for _ in range(6)]
        kept = [o for o in observations if o.status is StepStatus.OK]
        refused = observations[len(kept):]
        assert len(kept) == 4 and refused  # 4 x 60 kB pass the 200 kB cap, 3 do not
        for obs in refused:
            assert obs.status is StepStatus.ABORTED and obs.done and obs.stdout == ""
            assert obs.error.ename == "EpisodeHistoryFull" and obs.metadata["history_full"]
        assert env.state.step_count == 4 and len(env.episode.steps) == 4
        assert 200_000 <= env.episode.kept_bytes < 270_000  # 4 steps of about 61 kB held
        # A refused step ran nothing; the kernel and its state are still there.
        assert (await env.step("1 + 1")).error.ename == "EpisodeHistoryFull"
        notebook = await env.export_notebook()
        assert len([c for c in notebook.cells if c.cell_type == "code"]) == 4
        await env.reset()
        obs = await env.step("1 + 1")
        assert obs.status is StepStatus.OK and obs.return_value == "2"
        assert env.episode.kept_bytes < 10_000


async def test_retries_count_against_the_history_cap_once_more(shared_pool):
    """A step with a request id is kept twice (its retry answer is a copy)."""
    async with KernelEnv(pool=shared_pool, max_history_bytes=10**9) as env:
        await env.reset()
        await env.step("print('y' * 10_000)")
        plain = env.episode.kept_bytes
        await env.step(CodeAction(code="print('y' * 10_000)", request_id="r1"))
        assert env.episode.kept_bytes - plain >= 2 * 10_000
