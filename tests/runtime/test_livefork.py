"""Live fork of an episode: children hold the parent's state, are independent, and contained."""

from __future__ import annotations

import anyio
import pytest

from kernelenv import KernelEnv, KernelPool
from kernelenv.errors import EnvClosedError, ForkError, ResetNeeded
from kernelenv.models import StepStatus
from kernelenv.sandbox.cgroup import cgroup_parent
from kernelenv.sandbox.config import SandboxConfig, bwrap_problem

from levels import LEVELS

pytestmark = pytest.mark.anyio


STATE = (
    "import numpy as np, json\n"
    "data = np.arange(1_000_000)\n"
    "def answer(): return 41\n"
    "counter = 10\n"
    "open('notes.txt', 'w').write('from the parent')\n"
)


@pytest.fixture(params=LEVELS)
async def level_pool(request, anyio_backend):
    config = SandboxConfig(level=request.param, max_processes=64)
    async with KernelPool(size=0, sandbox=config) as pool:
        yield request.param, pool


async def test_children_hold_the_parent_state_and_are_independent(level_pool, no_leaks):
    level, pool = level_pool
    async with KernelEnv(pool=pool) as parent:
        await parent.reset()
        assert (await parent.step(STATE)).status is StepStatus.OK
        children = await parent.fork(2)
        try:
            ids = {parent.state.episode_id, *(c.state.episode_id for c in children)}
            assert len(ids) == 3
            for i, child in enumerate(children):
                seen = await child.step(
                    f"counter += {i + 1}\n"
                    "open('notes.txt', 'a').write(' + child')\n"
                    "(counter, answer(), int(data.sum()), open('notes.txt').read(), "
                    "__import__('sys').modules['json'].__name__)"
                )
                assert seen.status is StepStatus.OK, seen.stderr
                assert seen.return_value == (
                    f"({11 + i}, 41, 499999500000, 'from the parent + child', 'json')"
                )
            # The parent goes on unchanged: its variables and its own file.
            after = await parent.step("(counter, open('notes.txt').read())")
            assert after.return_value == "(10, 'from the parent')"
            # Its forks' intermediates, reaped after its reply, hold no pid of its budget.
            await anyio.sleep(0.5)
            left = await parent.step(
                "import os\n"
                "try:\n"
                "    os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)\n"
                "    left = 'a child is left'\n"
                "except ChildProcessError:\n"
                "    left = 'none'\n"
                "left"
            )
            assert left.return_value == "'none'", left.stderr
            kernel_pids = {parent.kernel.pid, *(c.kernel.pid for c in children)}
            assert len(kernel_pids) == 3
        finally:
            for child in children:
                await child.close()


async def test_a_child_notebook_holds_the_parent_cells_marked_inherited(level_pool, no_leaks):
    _, pool = level_pool
    async with KernelEnv(pool=pool) as parent:
        await parent.reset()
        await parent.step("x = 1")
        await parent.step("x += 1")
        [child] = await parent.fork(1)
        async with child:
            await child.step("x * 10")
            notebook = await child.export_notebook()
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.source for c in code] == ["x = 1", "x += 1", "x * 10"]
    assert [c.metadata["kernelenv"].get("inherited", False) for c in code] == [True, True, False]
    meta = notebook.metadata["kernelenv"]
    assert meta["forked_from"] == {"episode_id": parent.state.episode_id, "steps": 2}


async def test_hostile_children_leave_the_parent_and_siblings_working(level_pool, no_leaks):
    level, pool = level_pool
    async with KernelEnv(pool=pool, step_timeout_s=3, interrupt_grace_s=0.5) as parent:
        await parent.reset()
        await parent.step("value = 7")
        crash, hang, bomb, calm = await parent.fork(4)
        try:
            died = await crash.step("import os; os._exit(3)")
            assert died.status is StepStatus.KERNEL_DIED
            slow = await hang.step("import signal, time\n"
                                   "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                   "time.sleep(60)")
            assert slow.status is StepStatus.TIMEOUT
            if level != "none":  # the pids cap (a cgroup of the child's own, or the watchdog)
                burst = await bomb.step(
                    "import subprocess\nprocs = []\n"
                    "try:\n"
                    "    for _ in range(200):\n"
                    "        procs.append(subprocess.Popen(['sleep', '30']))\n"
                    "except OSError as exc:\n"
                    "    print('capped', type(exc).__name__)\n"
                    "len(procs)"
                )
                assert "capped" in burst.stdout, burst.stderr
                assert int(burst.return_value) < 200
            assert (await calm.step("value + 1")).return_value == "8"
            assert (await parent.step("value")).return_value == "7"
        finally:
            for child in (crash, hang, bomb, calm):
                await child.close()


# A fork reading its parent's memory where the object sits in both (found by an outside red
# team at level limits, where forks share one Landlock domain and one user).
PEEK = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]
buffer = ctypes.create_string_buffer(8)
mine, theirs = iovec(ctypes.addressof(buffer), 8), iovec(id(counter), 8)
print(libc.process_vm_readv({pid}, ctypes.byref(mine), 1, ctypes.byref(theirs), 1, 0))
"""


async def test_forks_cannot_read_one_anothers_memory(level_pool, no_leaks):
    level, pool = level_pool
    if level == "none":
        pytest.skip("level none contains nothing (a root server's kernels may ptrace anything)")
    async with KernelEnv(pool=pool) as parent:
        await parent.reset()
        await parent.step(STATE)
        first, second = await parent.fork(2)
        async with first, second:
            for reader, target in ((first, parent), (first, second), (parent, first)):
                pid = target.kernel.pid
                seen = await reader.step(PEEK.format(pid=pid))
                assert seen.stdout.strip() == "-1", (level, seen.stdout, seen.stderr)
            assert (await second.step("counter")).return_value == "10"


@pytest.mark.skipif(cgroup_parent() is None, reason="no writable pids cgroup here")
async def test_each_child_has_a_pids_cgroup_of_its_own(no_leaks):
    async with KernelPool(size=0, sandbox="limits") as pool, KernelEnv(pool=pool) as parent:
        await parent.reset()
        [child] = await parent.fork(1)
        async with child:
            parent_cgroup = parent.kernel.manager.provisioner.pids_cgroup
            child_cgroup = child.kernel.manager.provisioner.cgroup
            assert child_cgroup is not None and parent_cgroup is not None
            assert child_cgroup.path != parent_cgroup.path
            assert child.kernel.pid in child_cgroup.pids()
            assert child.kernel.pid not in parent_cgroup.pids()


@pytest.mark.skipif(bwrap_problem() is not None, reason="no bubblewrap")
async def test_under_bwrap_a_child_has_no_network_and_sees_no_other_episode(no_leaks):
    async with KernelPool(size=0, sandbox="bwrap") as pool:
        async with KernelEnv(pool=pool) as other, KernelEnv(pool=pool) as parent:
            await other.reset()
            await parent.reset()
            [child] = await parent.fork(1)
            async with child:
                probe = await child.step(
                    "import socket, os\n"
                    "try:\n"
                    "    socket.create_connection(('1.1.1.1', 80), timeout=1); net = True\n"
                    "except OSError:\n"
                    "    net = False\n"
                    f"(net, os.path.exists({str(other.kernel.work_dir)!r}))"
                )
                assert probe.return_value == "(False, False)", probe.stderr


async def test_a_fork_refuses_with_a_reason_when_it_cannot_be_faithful(no_leaks):
    async with KernelPool(size=0, sandbox="none") as pool, KernelEnv(pool=pool) as env:
        await env.reset()
        await env.step(
            "import threading, time\n"
            "worker = threading.Thread(target=time.sleep, args=(30,), name='worker', daemon=True)\n"
            "worker.start()"
        )
        with pytest.raises(ForkError, match="threads are running.*worker"):
            await env.fork(1)
        # The episode is unharmed by the refusal.
        assert (await env.step("1 + 1")).return_value == "2"


async def test_forking_without_a_live_kernel_is_a_clear_error(no_leaks):
    async with KernelPool(size=0, sandbox="none") as pool:
        env = KernelEnv(pool=pool)
        with pytest.raises(ResetNeeded):
            await env.fork(1)
        await env.reset()
        await env.step("import os; os._exit(1)")  # the kernel died
        with pytest.raises(ForkError, match="kernel is gone"):
            await env.fork(1)
        with pytest.raises(ValueError, match="between 1 and"):
            await env.fork(0)
        await env.close()
        with pytest.raises(EnvClosedError):
            await env.fork(1)


async def test_a_child_can_be_graded_with_the_inherited_steps(no_leaks):
    async with KernelPool(size=0, sandbox="none") as pool, KernelEnv(pool=pool) as parent:
        await parent.reset(task_id="functions_easy_palindrome")
        [child] = await parent.fork(1)
        async with child:
            assert child.state.task_id == "functions_easy_palindrome"
            grade = await child.grade()
            assert 0.0 <= grade.score <= 1.0


def test_the_blocking_facade_forks_on_its_own_loop(no_leaks):
    with KernelEnv(pool_size=0, sandbox="none").sync() as env:
        env.reset()
        env.step("z = 3")
        children = env.fork(2)
        try:
            assert [c.step("z * 2").return_value for c in children] == ["6", "6"]
        finally:
            for child in children:
                child.close()
        assert env.step("z").return_value == "3"


async def test_the_journal_records_the_lineage(tmp_path, no_leaks):
    from kernelenv.episodes.journal import Journal, read_journal

    journal = Journal(tmp_path)
    async with KernelPool(size=0, sandbox="none") as pool:
        async with KernelEnv(pool=pool, journal=journal) as parent:
            await parent.reset()
            await parent.step("a = 1")
            [child] = await parent.fork(1)
            async with child:
                await child.step("a + 1")
                child_id, parent_id = child.state.episode_id, parent.state.episode_id
    entry = read_journal(journal.path_of(child_id))
    notebook = entry.notebook()
    assert notebook.metadata["kernelenv"]["forked_from"] == {"episode_id": parent_id, "steps": 1}
    assert [c.source for c in notebook.cells if c.cell_type == "code"] == ["a = 1", "a + 1"]


FORKING_SCRIPT = """
import asyncio, json, sys
from kernelenv import KernelEnv, KernelPool

async def main():
    async with KernelPool(size=0, sandbox=sys.argv[1]) as pool, KernelEnv(pool=pool) as env:
        await env.reset()
        await env.step("x = 1")
        children = await env.fork(2)
        cgroups = [str(c.kernel.manager.provisioner.cgroup.path)
                   for c in children if c.kernel.manager.provisioner.cgroup is not None]
        print(json.dumps({"pids": [env.kernel.pid, *(c.kernel.pid for c in children)],
                          "cgroups": cgroups, "root": str(pool.root)}), flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.parametrize("level", LEVELS)
async def test_a_killed_host_takes_its_forks_down(level, tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    import anyio
    import psutil

    from kernelenv.runtime.pool import reap_stale_roots
    from kernelenv.sandbox.cgroup import reap_stale_cgroups

    script = tmp_path / "fork_and_wait.py"
    script.write_text(FORKING_SCRIPT)
    host = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, str(script), level], stdout=subprocess.PIPE, text=True
    )
    try:
        line = await anyio.to_thread.run_sync(host.stdout.readline)
        report = json.loads(line)
        assert len(report["pids"]) == 3 and all(report["pids"])
        host.send_signal(signal.SIGKILL)
        host.wait(timeout=10)
        deadline = time.monotonic() + 20
        def running(pid: int) -> bool:  # a process may exit between two questions about it
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        while any(running(p) for p in report["pids"]) and time.monotonic() < deadline:
            await anyio.sleep(0.1)
        left = [p for p in report["pids"] if running(p)]
        for pid in left:
            psutil.Process(pid).kill()
        assert not left, f"kernels outlived their host: {left}"
        # What the dead host could not remove, the next pool's start-up reaps.
        reap_stale_roots()
        reap_stale_cgroups()
        from pathlib import Path

        assert not Path(report["root"]).exists()
        assert not any(Path(c).exists() for c in report["cgroups"])
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        host.stdout.close()


async def test_a_fork_too_deep_for_its_sockets_is_a_clear_error(no_leaks):
    """A Unix socket path holds 107 bytes: a pool folder deep enough for its kernels but not
    for their forks (which live inside the parent's folder) gets a ForkError that says so,
    not a child that never connects."""
    import shutil
    import tempfile
    from pathlib import Path

    level = "bwrap" if bwrap_problem() is None else "limits"
    top = Path(tempfile.mkdtemp(prefix="kl-"))
    deep = top / ("p" * (52 - len(str(top)) - 1))  # the pool's folder: 52 + 19 bytes long
    deep.mkdir()
    try:
        async with KernelPool(size=0, sandbox=level, root_dir=deep) as pool:
            async with KernelEnv(pool=pool) as env:
                await env.reset()
                with pytest.raises(ForkError, match="IPC socket path would be .* bytes"):
                    await env.fork(1)
                assert (await env.step("6 * 7")).return_value == "42"
    finally:
        shutil.rmtree(top, ignore_errors=True)
