"""The Ray backend on a real local Ray: envs spread over actors, state per episode, dead actors."""

from __future__ import annotations

import shutil
import tempfile

import anyio
import psutil
import pytest

ray = pytest.importorskip("ray")

from kernelenv import CodeAction, KernelEnv, KernelStartError, PoolExhaustedError, StepStatus
from kernelenv.models import EXIT_KERNEL_DIED
from kernelenv.runtime.ray import RayKernelPool
from kernelenv.tasks.library import default_library

pytestmark = pytest.mark.anyio

# Fractional CPUs let several actors share the two cores of a small machine.
ACTOR_OPTIONS = {"num_cpus": 0.5}


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (starting Ray takes several seconds)."""
    temp_dir = tempfile.mkdtemp(prefix="ray-test-")  # Ray leaves its logs behind otherwise
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")  # else Ray writes a token file in $HOME
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=80 * 1024**2,
            _temp_dir=temp_dir,
        )
        try:
            yield
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
async def ray_pool(ray_cluster):
    async with RayKernelPool(actors=2, size=1, actor_options=ACTOR_OPTIONS) as pool:
        yield pool


def kernels_of(actor_pid: int) -> list[psutil.Process]:
    """The kernel processes an actor's worker process started (cold, or a template and the
    kernels it forked)."""
    try:
        descendants = psutil.Process(actor_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in descendants if any(word in _cmdline(p) for word in KERNEL_WORDS)]


KERNEL_WORDS = ("ipykernel", "runtime.template")


def _cmdline(process: psutil.Process) -> str:
    """Its command line, or "" once it has exited (one process gone must not hide the rest)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def wait_until(predicate, timeout_s: float = 30.0) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():
            await anyio.sleep(0.1)


async def test_envs_spread_over_actors_and_keep_their_own_state(ray_pool):
    envs = [KernelEnv(pool=ray_pool) for _ in range(4)]
    try:
        for i, env in enumerate(envs):
            await env.reset()
            await env.step(f"me = {i}")
        values = [(await env.step("me")).return_value for env in envs]
        assert values == ["0", "1", "2", "3"]  # one kernel, one namespace per episode
        assert len({env.kernel.kernel_id for env in envs}) == 4
        hosts = {id(env.kernel.host) for env in envs}
        assert len(hosts) == 2  # spread over both actors
        assert all(env.state.step_count == 2 for env in envs)
        observation = await envs[0].step("1 / 0")
        assert observation.status is StepStatus.ERROR
        assert observation.error.ename == "ZeroDivisionError"
        assert observation.metadata["node_id"] == envs[0].kernel.node_id
    finally:
        for env in envs:
            await env.close()
    with anyio.fail_after(30):  # closed envs give their kernels back, in the background
        while sum(count["leased"] for count in await ray_pool.counts()) > 0:
            await anyio.sleep(0.1)
    assert len(await ray_pool.counts()) == 2


async def test_killed_actor_is_reported_and_the_episode_goes_on(ray_pool):
    async with KernelEnv(pool=ray_pool) as env:
        await env.reset()
        assert (await env.step("secret = 42; secret")).return_value == "42"
        host = env.kernel.host
        actor_pid = host.info["pid"]
        orphans = kernels_of(actor_pid)
        assert orphans, "the actor should own live kernels"

        ray.kill(host.actor)
        lost = await env.step("secret")
        assert lost.status is StepStatus.KERNEL_DIED
        assert lost.exit_code == EXIT_KERNEL_DIED
        assert lost.metadata["actor_lost"] is True
        assert "Ray actor" in lost.error.evalue

        after = await env.step(CodeAction(code="'secret' in globals()"))
        assert after.kernel_restarted
        assert after.status is StepStatus.OK
        assert after.return_value == "False"  # a fresh kernel, on another actor
        assert env.kernel.host is not host
        assert env.state.step_count == 3

    await wait_until(lambda: len([h for h in ray_pool.hosts if h.info]) == 2)
    assert host.actor not in ray_pool.actors
    # The dead actor's kernels notice their parent is gone and exit.
    await wait_until(lambda: not any(alive(p) for p in orphans))


async def test_dead_kernel_on_a_live_actor_is_replaced(ray_pool):
    lost_before = ray_pool.lost_hosts
    async with KernelEnv(pool=ray_pool) as env:
        await env.reset()
        died = await env.step("import os; os._exit(3)")
        assert died.status is StepStatus.KERNEL_DIED
        assert "actor_lost" not in died.metadata  # the kernel died, not its actor
        after = await env.step("40 + 2")
        assert after.kernel_restarted and after.return_value == "42"
    assert ray_pool.lost_hosts == lost_before  # the actor lived on


async def test_task_episode_is_graded_on_ray_kernels(ray_pool):
    task = default_library().get("functions_easy_palindrome")
    async with KernelEnv(pool=ray_pool) as env:
        observation = await env.reset(task_id=task.id)
        assert observation.task_description == task.prompt
        for code in task.solution:
            assert (await env.step(code)).status is StepStatus.OK
        grade = await env.grade()
        assert grade.passed and grade.score >= 0.95


async def test_backend_ray_keeps_the_env_api(ray_cluster):
    async with KernelEnv(backend="ray") as env:
        await env.reset(seed=3)
        observation = await env.step("import random; print(random.random())")
        assert observation.status is StepStatus.OK
        local = __import__("random").Random(3).random()
        assert observation.stdout.strip() == repr(local)
        kernels = kernels_of(env.kernel.host.info["pid"])
        assert kernels
    assert env.pool.hosts == []
    await wait_until(lambda: not any(alive(p) for p in kernels))


async def test_actor_that_cannot_start_is_reported_not_retried(ray_cluster):
    async with RayKernelPool(
        actors=1, actor_options=ACTOR_OPTIONS, pool_options={"no_such_option": 1}
    ) as pool:
        with pytest.raises(KernelStartError, match="no_such_option"):
            await pool.acquire(timeout_s=60)
        assert pool.hosts == []


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'slurm'"):
        KernelEnv(backend="slurm")


async def test_envs_the_cluster_cannot_place_fail_in_time_naming_the_cpus(ray_cluster):
    """Three one-CPU envs on a two-CPU Ray: the one that finds no room fails, it does not hang."""
    envs = []
    try:
        with anyio.fail_after(120):  # a hang fails here rather than at the suite's timeout
            with pytest.raises(PoolExhaustedError) as raised:
                for _ in range(3):
                    env = KernelEnv(backend="ray", acquire_timeout_s=5)
                    await env.__aenter__()
                    envs.append(env)
                    await env.reset()
        message = str(raised.value)
        assert "could not be placed within 5 s" in message
        assert "missing: CPU=1" in message
        assert len(envs) < 3
    finally:
        for env in envs:
            await env.close()


async def test_acquire_bounds_the_placement_of_actors(ray_cluster):
    # A resource no node has: Ray queues the actor for ever.
    options = {**ACTOR_OPTIONS, "resources": {"kernelenv_test_absent": 1}}
    pool = RayKernelPool(actors=1, actor_options=options)
    try:
        with anyio.fail_after(120):
            with pytest.raises(PoolExhaustedError, match=r"missing: kernelenv_test_absent=1"):
                await pool.acquire(timeout_s=3)
    finally:
        await pool.aclose()
    assert pool.hosts == []
