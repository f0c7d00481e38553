"""The kernel pool: sharing, refilling, dead kernels, drained pools, stale directories."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
import psutil
import pytest

from kernelenv import KernelEnv, KernelPool, PoolExhaustedError
from kernelenv.runtime.pool import OWNER_FILE, OWNER_LOCK, ROOT_PREFIX, reap_stale_roots

pytestmark = pytest.mark.anyio


async def wait_until(predicate, timeout_s: float = 30.0) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():
            await anyio.sleep(0.05)


async def test_many_envs_share_one_pool_with_isolated_kernels(no_leaks):
    async with KernelPool(size=2) as pool:
        envs = [KernelEnv(pool=pool) for _ in range(3)]
        for i, env in enumerate(envs):
            await env.reset()
            await env.step(f"me = {i}")
        values = [(await env.step("me")).return_value for env in envs]
        assert values == ["0", "1", "2"]
        pids = {env.kernel.pid for env in envs}  # host-side: a sandbox has its own PID namespace
        assert len(pids) == 3
        for env in envs:
            await env.close()
        assert not pool._closed  # envs never close a shared pool


async def test_pool_refills_in_the_background(no_leaks):
    async with KernelPool(size=2) as pool:
        await wait_until(lambda: pool.ready_count == 2)
        kernel = await pool.acquire()
        assert pool.ready_count == 1
        await wait_until(lambda: pool.ready_count == 2)
        pool.release(kernel)


async def test_drained_pool_starts_a_kernel_on_demand(no_leaks):
    async with KernelPool(size=0) as pool:
        assert pool.ready_count == 0 and pool.starting_count == 0
        kernel = await pool.acquire()
        assert await kernel.is_alive()
        pool.release(kernel)


async def test_acquire_timeout_raises_pool_exhausted(no_leaks):
    async with KernelPool(size=0, max_concurrent_starts=1) as pool:
        with pytest.raises(PoolExhaustedError):
            await pool.acquire(timeout_s=0.01)


async def test_a_kernel_that_died_in_the_pool_is_never_handed_out(no_leaks):
    async with KernelPool(size=1) as pool:
        await wait_until(lambda: pool.ready_count == 1)
        doomed = pool._ready._queue[0]
        psutil.Process(doomed.pid).kill()
        await wait_until(lambda: doomed.exit_code() is not None, 10)
        kernel = await pool.acquire()
        assert kernel is not doomed and await kernel.is_alive()
        pool.release(kernel)


async def test_warmup_code_runs_before_handover(no_leaks):
    async with KernelPool(size=1, warmup_code="import json as preloaded") as pool:
        async with KernelEnv(pool=pool) as env:
            await env.reset()
            obs = await env.step("preloaded.dumps([1])")
            assert obs.return_value == "'[1]'"
            assert obs.execution_count == 1  # warm-up is silent: no execution count used


def test_stale_pool_directories_of_dead_processes_are_reaped():
    """An owner lives while it holds its directory's lock, whatever pid its file names (a pid
    of another PID namespace means nothing here)."""
    parent = Path(tempfile.mkdtemp())
    holder = None
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
        stale = parent / f"{ROOT_PREFIX}stale"
        stale.mkdir()
        (stale / OWNER_LOCK).touch()
        (stale / OWNER_FILE).write_text(dead)
        # Alive: a process holds the lock, though the file names a pid that is gone here.
        alive = parent / f"{ROOT_PREFIX}alive"
        alive.mkdir()
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import fcntl, sys; f = open(sys.argv[1], 'wb'); fcntl.flock(f, fcntl.LOCK_EX);"
             " print('held', flush=True); sys.stdin.read()", str(alive / OWNER_LOCK)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert holder.stdout.readline().strip() == "held"
        (alive / OWNER_FILE).write_text(dead)
        being_made = parent / f"{ROOT_PREFIX}new"  # no owner file yet
        being_made.mkdir()
        assert reap_stale_roots(parent) == [stale]
        assert not stale.exists() and alive.exists() and being_made.exists()
        holder.stdin.close()
        holder.wait(timeout=30)
        assert reap_stale_roots(parent) == [alive]  # its owner is gone now
    finally:
        if holder is not None:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
            holder.stdout.close()
        import shutil

        shutil.rmtree(parent)


def test_a_killed_owner_leaves_no_kernel_running():
    """Kernels exit with their parent (JPY_PARENT_PID, or bwrap's --die-with-parent), even
    when it is SIGKILLed."""
    script = (
        "import anyio, os, sys\n"
        "from kernelenv import KernelEnv\n"
        "async def main():\n"
        "    env = KernelEnv()\n"
        "    await env.reset()\n"
        "    import psutil\n"
        "    outer = psutil.Process(env.kernel.pid)\n"
        "    for p in [outer, *outer.children(recursive=True)]:\n"
        "        command = ' '.join(p.cmdline())\n"
        "        if 'launch_new_instance' in command or 'runtime.template' in command:\n"
        "            print(p.pid, flush=True)  # the kernel itself (cold or forked), as the host sees it\n"
        "    os.kill(os.getpid(), 9)\n"
        "anyio.run(main)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    kernel_pid = int(proc.stdout.split()[0])
    import time

    end = time.monotonic() + 15
    while psutil.pid_exists(kernel_pid) and time.monotonic() < end:
        try:
            if psutil.Process(kernel_pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    alive = psutil.pid_exists(kernel_pid) and psutil.Process(kernel_pid).status() != psutil.STATUS_ZOMBIE
    if alive:
        psutil.Process(kernel_pid).kill()
    assert not alive


async def test_kernels_that_cannot_start_raise_instead_of_waiting(no_leaks):
    from kernelenv import KernelStartError

    async with KernelPool(size=1, python="/nonexistent/python3", sandbox="none") as pool:
        with pytest.raises(KernelStartError, match="failed in a row"):
            await pool.acquire(timeout_s=120)
