"""Template kernels on real processes: forked kernels behave as cold ones, contained as cold ones,
and nothing of a template (process, child, cgroup, directory) outlives its pool or its owner."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from kernelenv import KernelEnv, KernelPool, SandboxConfig, StepStatus
from kernelenv.sandbox.cgroup import CGROUP_PREFIX, cgroup_parent
from kernelenv.sandbox.config import bwrap_problem, limits_problem
from kernelenv.sandbox.episode_fs import mounts_under

pytestmark = pytest.mark.anyio

LEVELS = ["none", "limits", "bwrap"]


def level_config(level: str) -> SandboxConfig:
    if level == "bwrap" and bwrap_problem() is not None:
        pytest.skip(f"no bwrap here: {bwrap_problem()}")
    if level != "none" and limits_problem() is not None:
        pytest.skip(f"no limits here: {limits_problem()}")
    return SandboxConfig(level=level)


def contained(pool) -> None:
    if pool.sandbox.level == "none":
        pytest.skip("level none contains nothing")


def forked(env_or_kernel) -> bool:
    kernel = getattr(env_or_kernel, "kernel", env_or_kernel)
    return getattr(kernel.manager.provisioner, "forked", False)


@pytest.fixture(scope="module", params=LEVELS)
async def pool(request, anyio_backend):
    async with KernelPool(
        size=0, sandbox=level_config(request.param), launch="template",
        warmup_code="import json\nWARMED = 'yes'",
    ) as pool:
        yield pool


async def test_a_template_kernel_runs_cells_and_survives_interrupts(pool):
    async with KernelEnv(pool=pool, step_timeout_s=2.0, interrupt_grace_s=0.5) as env:
        obs = await env.reset()
        assert forked(env)
        obs = await env.step("x = 6 * 7\nprint('out')\nx")
        assert obs.status is StepStatus.OK and obs.stdout == "out\n" and obs.return_value == "42"
        assert obs.execution_count == 1  # the template's warm-up cells left no trace
        obs = await env.step("import time\nwhile True: time.sleep(0.01)")
        assert obs.status is StepStatus.TIMEOUT
        obs = await env.step("x + 1")  # interrupted, not restarted: state kept
        assert obs.return_value == "43" and not obs.kernel_restarted
        obs = await env.step("1/0")
        assert obs.status is StepStatus.ERROR and obs.error.ename == "ZeroDivisionError"
        assert "ZeroDivisionError" in obs.stderr


async def test_warmup_code_ran_once_in_the_template(pool):
    async with KernelEnv(pool=pool) as env:
        await env.reset()
        assert forked(env)
        obs = await env.step("WARMED, 'json' in dir()")
        assert obs.return_value == "('yes', True)"
        obs = await env.step("len(In), In[1][:6]")  # no warm-up cell in the history
        assert obs.return_value == "(3, 'WARMED')"


async def test_a_kernel_ignoring_sigint_is_killed_and_replaced(pool):
    async with KernelEnv(pool=pool, step_timeout_s=1.0, interrupt_grace_s=0.5) as env:
        await env.reset()
        first = env.kernel.pid
        obs = await env.step(
            "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "while True: time.sleep(0.01)"
        )
        assert obs.status is StepStatus.TIMEOUT
        obs = await env.step("1 + 1")
        assert obs.kernel_restarted and obs.return_value == "2"
        assert env.kernel.pid != first and not psutil.pid_exists(first) or _zombie(first)


async def test_os_exit_is_kernel_died(pool):
    async with KernelEnv(pool=pool) as env:
        await env.reset()
        obs = await env.step("import os; os._exit(3)")
        assert obs.status is StepStatus.KERNEL_DIED and obs.exit_code == 137
        assert obs.metadata.get("kernel_exit_code") == 3
        obs = await env.step("'alive'")
        assert obs.return_value == "'alive'" and obs.kernel_restarted


async def test_children_are_independent(pool):
    async with KernelEnv(pool=pool) as one, KernelEnv(pool=pool) as two:
        await one.reset(seed=None)
        await two.reset(seed=None)
        assert forked(one) and forked(two)
        await one.step("import sys; sys.modules['json'].marker = 1; shared = 'one'")
        obs = await two.step("import json; hasattr(json, 'marker'), 'shared' in dir()")
        assert obs.return_value == "(False, False)"
        a = await one.step("import os, random; os.getpid(), os.getcwd(), random.random()")
        b = await two.step("import os, random; os.getpid(), os.getcwd(), random.random()")
        assert a.return_value != b.return_value
        pids = [one.kernel.pid, two.kernel.pid]  # (at bwrap, each is PID 2 of its namespace)
        cwds = [eval(obs.return_value)[1] for obs in (a, b)]  # noqa: S307
        assert len(set(pids)) == 2 and len(set(cwds)) == 2
        assert cwds[0] == str(one.kernel.work_dir) and cwds[1] == str(two.kernel.work_dir)


async def test_limits_apply_in_a_forked_kernel(pool):
    contained(pool)
    async with KernelEnv(pool=pool, step_timeout_s=5.0) as env:
        await env.reset()
        obs = await env.step("huge = bytearray(8 * 1024**3)")
        assert obs.status is StepStatus.ERROR and obs.error.ename == "MemoryError"
        status = await env.step("print(open('/proc/self/status').read())")
        fields = dict(line.split(":\t", 1) for line in status.stdout.splitlines() if ":\t" in line)
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
        assert fields["NoNewPrivs"].strip() == "1"
        obs = await env.step("import resource; resource.setrlimit(resource.RLIMIT_AS, (-1, -1))")
        assert obs.status is StepStatus.ERROR  # no CAP_SYS_RESOURCE: cannot raise it again
        secret = await env.step("import os; sorted(k for k in os.environ if k.endswith('_TOKEN'))")
        assert secret.return_value == "[]"


async def test_the_pids_cgroup_holds_the_kernel_and_caps_a_fork_bomb(pool):
    contained(pool)
    if cgroup_parent() is None:
        pytest.skip("no writable pids cgroup on this machine")
    async with KernelEnv(pool=pool, step_timeout_s=3.0, interrupt_grace_s=0.5) as env:
        await env.reset()
        cgroup = env.kernel.manager.provisioner.pids_cgroup
        assert env.kernel.pid in cgroup.pids()  # the host checked it before the first request
        obs = await env.step("print(open('/proc/self/cgroup').read())")
        assert cgroup.path.name in obs.stdout
        obs = await env.step("import os\nwhile True:\n    os.fork()")
        # Stopped by the pids cgroup, or (copying the kernel's pages) by the memory cgroup.
        assert obs.status in (StepStatus.ERROR, StepStatus.TIMEOUT, StepStatus.KERNEL_DIED)
        after = await env.step("1")
        if after.status is StepStatus.OK and env.kernel is not None:
            cap = pool.sandbox.max_processes
            assert len(env.kernel.manager.provisioner.pids_cgroup.pids()) <= cap
        # The bomb's processes outlive its step and keep copying the kernel's pages, so the
        # memory cgroup may kill the kernel a step later: that step reports the death, and the
        # next one runs on a fresh kernel.
        for _ in range(3):
            obs = await env.step("21 * 2")
            if obs.status is not StepStatus.KERNEL_DIED:
                break
        assert obs.return_value == "42", obs.stderr


async def test_a_kernel_cannot_ask_its_template_for_kernels(pool):
    async with KernelEnv(pool=pool) as env:
        await env.reset()
        path = str(pool.template.socket_path)
        obs = await env.step(textwrap.dedent(f"""
            import json, socket
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            try:
                s.connect({path!r})  # at bwrap, the template's directory is not even visible
                s.sendall(json.dumps({{"op": "spawn", "connection_file": "/x"}}).encode() + b"\\n")
                answer = s.recv(100)
            except OSError as exc:
                answer = type(exc).__name__
            answer
        """))
        assert obs.status is StepStatus.OK, obs.stderr
        assert obs.return_value in ("b''", "'ConnectionResetError'", "'BrokenPipeError'",
                                    "'FileNotFoundError'")  # fmt: skip


async def test_a_killed_template_is_restarted_and_the_fallback_is_logged(caplog, no_leaks):
    caplog.set_level(logging.WARNING)
    async with KernelPool(size=0, sandbox="none", launch="template") as pool:
        kernel = await pool.acquire()
        assert forked(kernel)
        pool.release(kernel)
        old = pool.template.pid
        os.kill(old, signal.SIGKILL)
        while pool.template.alive:
            await asyncio.sleep(0.01)
        kernel = await pool.acquire()  # cold, while the template restarts
        assert not forked(kernel)
        assert (await kernel.execute("6 * 7", timeout_s=30)).observation.return_value == "42"
        pool.release(kernel)
        assert "kernel template died" in caplog.text
        assert "starting kernel" in caplog.text and "cold" in caplog.text
        deadline = time.monotonic() + 60
        while not pool.template.ready and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert pool.template.ready and pool.template.pid != old
        kernel = await pool.acquire()
        assert forked(kernel)
        pool.release(kernel)


async def test_launch_cold_starts_no_template(no_leaks):
    async with KernelPool(size=0, sandbox="none", launch="cold") as pool:
        kernel = await pool.acquire()
        assert pool.template is None and not forked(kernel)
        pool.release(kernel)


@pytest.mark.parametrize("level", LEVELS)
async def test_nothing_is_left_after_close(level, no_leaks):
    async with KernelPool(size=2, sandbox=level_config(level), launch="template") as pool:
        kernels = [await pool.acquire() for _ in range(3)]
        assert all(forked(k) for k in kernels)
        template = pool.template.pid
        pids = [k.pid for k in kernels]
        cgroups = [k.manager.provisioner.pids_cgroup for k in kernels]
        root = pool.root
    assert not _alive(template) and not any(_alive(pid) for pid in pids)
    assert not root.exists() and not mounts_under(root)
    assert all(c is None or not c.path.exists() for c in cgroups)
    if cgroup_parent() is not None:
        assert not list(cgroup_parent().glob(f"{CGROUP_PREFIX}{os.getpid()}-k*"))


@pytest.mark.parametrize("level", LEVELS)
async def test_a_kernel_start_given_up_midway_dies_quietly(level, capfd, monkeypatch, no_leaks):
    """A cancelled start (a pool closing at the end of a script does that to its spares)
    removes the kernel's folder while its child is still starting: the child must die without
    printing a traceback, and must not fall back to TCP and recreate the folder."""
    from kernelenv.runtime.kernel import Kernel
    from kernelenv.sandbox import template_provisioner

    readable = template_provisioner._readable

    async def cancelled_once_forked(loop, sock):  # the template's "pid" line is there, unread
        await readable(loop, sock)
        raise asyncio.CancelledError

    async with KernelPool(size=0, sandbox=level_config(level), launch="template") as pool:
        await (await pool.acquire()).shutdown()  # the template is up
        capfd.readouterr()
        monkeypatch.setattr(template_provisioner, "_readable", cancelled_once_forked)
        for _ in range(5):
            with pytest.raises(asyncio.CancelledError):
                await Kernel.start(
                    root=pool.root, guards=pool.guards, kernel_name=pool.kernel_name,
                    spec_manager=pool.spec_manager,
                    disk_budget_bytes=pool._disk_budget_bytes(),
                )  # fmt: skip
        await asyncio.sleep(1.0)  # given-up children are killed asynchronously
        left = sorted(p.name for p in pool.root.glob("k[0-9]*-*"))
        err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err
    assert not left, f"folders of given-up kernels came back: {left}"


async def test_a_child_without_its_connection_file_fails_instead_of_going_tcp(capfd, no_leaks):
    """ipykernel, given no connection file, makes one up: TCP on its own ports, the folder
    recreated. A forked child must fail instead, and say why while its host still waits."""
    from kernelenv.sandbox.template_provisioner import TemplateUnavailable, spawn_from_template

    async with KernelPool(size=0, sandbox="none", launch="template") as pool:
        await (await pool.acquire()).shutdown()  # the template is up
        capfd.readouterr()
        folder = pool.root / "k0-gone"
        request = {
            "connection_file": str(folder / "run" / "connection.json"), "cwd": str(pool.root),
            "env": dict(os.environ), "rlimits": {}, "cgroup_procs": [],
            "drop_capabilities": False,
        }  # fmt: skip
        with pytest.raises(TemplateUnavailable, match="exited during start"):
            await spawn_from_template(str(pool.template.socket_path), request)
        err = capfd.readouterr().err
    assert "FileNotFoundError" in err and "connection.json" in err, err
    assert "TCP" not in err and not folder.exists()


def test_a_start_failure_is_quiet_once_the_host_gave_the_kernel_up(capfd):
    """The child reports a failure only while its host waits; a host that gave up closed the
    lease, with or without reading the template's last line (a reset, then)."""
    import socket

    from kernelenv.runtime.template import _print_failure

    def failure_printed(host_reads: bool | None) -> bool:
        host, template = socket.socketpair()
        template.sendall(b'{"pid": 1}\n')
        if host_reads is not None:  # the host leaves: after reading, or with the line unread
            if host_reads:
                host.recv(64)
            host.close()
        try:
            raise RuntimeError("the kernel's folder is gone")
        except RuntimeError:
            _print_failure({}, template.fileno())
        template.close()
        if host_reads is None:
            host.close()
        return "the kernel's folder is gone" in capfd.readouterr().err

    assert failure_printed(host_reads=None)  # the host still waits for this kernel
    assert not failure_printed(host_reads=True)
    assert not failure_printed(host_reads=False)


SERVER_SCRIPT = """
import asyncio, json, sys
from kernelenv import KernelPool, SandboxConfig
async def main():
    pool = KernelPool(size=1, sandbox=SandboxConfig(level="LEVEL"), launch="template")
    await pool.start()
    kernels = [await pool.acquire() for _ in range(2)]
    await kernels[0].execute("import subprocess; subprocess.Popen(['sleep', '600'])", timeout_s=30)
    while pool.ready_count < 1:  # the spare, too
        await asyncio.sleep(0.05)
    print(json.dumps({"template": pool.template.pid, "kernels": [k.pid for k in kernels]}),
          flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


@pytest.mark.parametrize("level", ["limits", "bwrap"])
async def test_a_sigkilled_owner_takes_its_template_and_kernels_down(level):
    level_config(level)
    owner = subprocess.Popen(  # noqa: ASYNC220  (starting it does not block)
        [sys.executable, "-c", SERVER_SCRIPT.replace("LEVEL", level)], stdout=subprocess.PIPE
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(owner.stdout.readline), 120)
        started = json.loads(line)
        tree = psutil.Process(owner.pid).children(recursive=True)
        assert started["template"] in [p.pid for p in tree]
        assert set(started["kernels"]) <= {p.pid for p in tree}
        assert len(tree) >= 5  # template, 3 kernels (one ready in the pool), a sleep
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(_alive(p.pid) for p in tree) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = [p.pid for p in tree if _alive(p.pid)]
        for pid in left:
            psutil.Process(pid).kill()
        assert not left, f"processes outlived their owner: {left}"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        owner.stdout.close()


ORPHAN_SCRIPT = """
import asyncio, json, sys
from kernelenv import KernelPool, SandboxConfig
async def main():
    pool = KernelPool(size=0, sandbox=SandboxConfig(level="LEVEL"), launch="template")
    await pool.start()
    kernel = await pool.acquire()
    pid = kernel.pid
    await kernel.execute(
        "import os, subprocess\\n"
        "subprocess.Popen(['sleep', '600'], start_new_session=True)\\n"
        "os._exit(0)", timeout_s=30)
    print(json.dumps({"template": pool.template.pid, "kernel": pid}), flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


async def test_a_sigkilled_owner_takes_down_what_an_exited_kernel_left():
    """At limits, a kernel exits and leaves a process in a session of its own (its cgroups
    hold it); its owner dies before removing them: the template still ends that process.
    (At bwrap the episode's init ends it as soon as the kernel exits.)"""
    level_config("limits")
    owner = subprocess.Popen(  # noqa: ASYNC220  (starting it does not block)
        [sys.executable, "-c", ORPHAN_SCRIPT.replace("LEVEL", "limits")], stdout=subprocess.PIPE
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(owner.stdout.readline), 120)
        started = json.loads(line)
        deadline = time.monotonic() + 15
        while _alive(started["kernel"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not _alive(started["kernel"])
        tree = psutil.Process(owner.pid).children(recursive=True)
        orphans = [p for p in tree if _name(p) == "sleep"]
        assert len(orphans) == 1 and _alive(started["template"])
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _alive(orphans[0].pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = _alive(orphans[0].pid)
        if left:
            orphans[0].kill()
        assert not left, "the exited kernel's process outlived the owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        owner.stdout.close()


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:  # exited meanwhile
        return ""


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _zombie(pid: int) -> bool:
    return not _alive(pid)


async def test_numpy_preloaded_in_the_template_works_and_is_reseeded_per_kernel(no_leaks):
    pytest.importorskip("numpy")
    async with KernelPool(
        size=0, sandbox="none", launch="template", warmup_code="import numpy as np"
    ) as pool:
        draws = []
        for _ in range(2):
            async with KernelEnv(pool=pool) as env:
                await env.reset()
                assert forked(env)
                obs = await env.step(  # a matrix product runs on BLAS's thread pool
                    "a = np.ones((300, 300)); float((a @ a)[0, 0]), np.random.randint(10**9)"
                )
                assert obs.status is StepStatus.OK, obs.stderr
                value, draw = eval(obs.return_value)  # noqa: S307 (our own output)
                assert value == 300.0
                draws.append(draw)
        assert draws[0] != draws[1]  # not the template's random state in every kernel


async def test_under_bwrap_forked_siblings_cannot_see_reach_or_uncover_each_other(no_leaks):
    """The attacks a sibling would try: the loopback, /tmp and /dev/shm, /proc, the pool's
    directory (and taking its cover off), a sysctl, a signal to the other kernel."""
    config = level_config("bwrap")
    async with KernelPool(size=0, sandbox=config) as pool, KernelEnv(pool=pool) as one, \
            KernelEnv(pool=pool) as two:  # fmt: skip
        await one.reset()
        await two.reset()
        assert forked(one) and forked(two)
        obs = await one.step(
            "import socket\nserver = socket.socket()\nserver.bind(('127.0.0.1', 47001))\n"
            "server.listen()\nopen('/tmp/secret', 'w').write('one')\n"
            "open('/dev/shm/secret', 'w').write('one')"
        )
        assert obs.status is StepStatus.OK, obs.stderr
        root = str(pool.root)
        obs = await two.step(textwrap.dedent(f"""
            import os, socket
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", 47001))
                reached = True
            except OSError:
                reached = False
            pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
            (reached, os.path.exists("/tmp/secret"), os.path.exists("/dev/shm/secret"), pids,
             sorted(os.listdir({root!r})))
        """))
        reached, tmp, shm, pids, visible = eval(obs.return_value)  # noqa: S307 (our own output)
        assert not reached and not tmp and not shm
        assert pids == [1, 2]  # its init and itself, nothing of the pool's other episodes
        assert visible == [two.kernel.directory.name]
        obs = await two.step(
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"libc.umount2({root!r}.encode(), 2), ctypes.get_errno()"
        )
        assert obs.return_value == "(-1, 1)"  # EPERM: the cover over the pool stays
        obs = await two.step("open('/proc/sys/kernel/domainname', 'w').write('x')")
        assert obs.status is StepStatus.ERROR and obs.error.ename in ("OSError", "PermissionError")
        obs = await two.step(f"import os, signal\nos.kill({one.kernel.pid}, signal.SIGKILL)")
        assert obs.status is StepStatus.ERROR and obs.error.ename == "ProcessLookupError"
        assert (await one.step("open('/tmp/secret').read()")).return_value == "'one'"
