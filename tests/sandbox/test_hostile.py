"""Hostile agent code at each containment level: it gets an observation, never a dead env.

Every case checks that the step comes back with the right status (a step that never came
back, its budget not enforced, fails after a minute: a guard against hangs, not a claim about
speed), that the next step or episode works, and, in the fixture's teardown, that no process,
cgroup or file of the episode is left.
Cases that only a stronger level stops run only there; some also run at the weaker levels to
show the same probe does see the hole there (the threat model in the README).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import psutil
import pytest
from local_server import start_plain_server, stop
from websockets.asyncio.client import connect

from kernelenv import KernelEnv, KernelPool, SandboxConfig, StepStatus
from kernelenv.runtime.pool import reap_stale_roots
from kernelenv.sandbox.cgroup import cgroup_parent, memory_cgroup_parent, reap_stale_cgroups
from kernelenv.sandbox.config import bwrap_available
from kernelenv.sandbox.episode_fs import episode_fs_problem, mounts_under
from kernelenv.sandbox.landlock import landlock_abi

pytestmark = pytest.mark.anyio

LEVELS = ["none", "limits", "bwrap"]
# Small limits, so that bombs fail fast.
LIMITS = {"memory_mb": 1024, "cpu_s": 120, "max_processes": 64}
STEP_TIMEOUT_S = 2.0
# Slow cases whose path (kernel, output capture) does not depend on the level run only at the
# default level, to keep the suite short.
DEFAULT_LEVEL_ONLY = ("bwrap",) if bwrap_available() else ("limits",)
# Far beyond any budget here: only a step whose budget was not enforced gets near it.
HANG_GUARD_S = 60.0
SECRET_NAME = "KERNELENV_HOSTILE_API_TOKEN"
SECRET_VALUE = uuid.uuid4().hex
SEGFAULT = "import ctypes\nctypes.string_at(0)"


@pytest.fixture(scope="module", params=LEVELS)
async def pool(request, anyio_backend):
    """One pool per level; the server's environment holds a secret while it runs."""
    level = request.param
    if level == "bwrap" and not bwrap_available():
        pytest.skip("bubblewrap is not usable here (scripts/install-system-deps.sh installs it)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_NAME, SECRET_VALUE)
        async with KernelPool(size=2, sandbox=SandboxConfig(level=level, **LIMITS)) as pool:
            yield pool


def level_of(pool: KernelPool) -> str:
    return pool.sandbox.level


def files_confined(pool: KernelPool) -> bool:
    """Whether the kernel's file access is confined: bwrap, or limits with Landlock (which
    needs the episode's byte budget, mounted by a root server)."""
    if level_of(pool) == "bwrap":
        return True
    return level_of(pool) == "limits" and landlock_abi() >= 1 and episode_fs_problem() is None


def only_at(pool: KernelPool, *levels: str, reason: str = "", need_cgroup: bool = False) -> None:
    if level_of(pool) not in levels:
        pytest.skip(
            reason or f"level {level_of(pool)!r} does not stop this (see the README's threat model)"
        )
    if need_cgroup and cgroup_parent() is None:
        pytest.skip("no writable pids cgroup on this machine")


@dataclass
class Footprint:
    """What one kernel of an episode left on the host: processes, cgroup, directory."""

    directory: Path
    pids: set[int] = field(default_factory=set)
    cgroups: list[Path] = field(default_factory=list)

    def leftovers(self) -> list[str]:
        left = [f"pid {pid}" for pid in self.pids if _running(pid)]
        left += [f"cgroup {path}" for path in self.cgroups if path.exists()]
        left += [f"mount {point}" for point in mounts_under(self.directory)]
        if self.directory.exists():
            left.append(f"directory {self.directory}")
        return left


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class HostileEpisode:
    """An env on the level's pool that records every kernel's footprint as it goes."""

    def __init__(self, env: KernelEnv) -> None:
        self.env = env
        self.footprints: dict[str, Footprint] = {}

    def note(self) -> None:
        kernel = self.env.kernel
        if kernel is None:
            return
        found = self.footprints.setdefault(kernel.kernel_id, Footprint(kernel.directory))
        cgroup = getattr(kernel.manager.provisioner, "cgroup", None)
        if cgroup is not None:
            found.cgroups = list(cgroup.paths)
            found.pids.update(cgroup.pids())
        try:
            outer = psutil.Process(kernel.pid)
            found.pids.update([outer.pid, *(p.pid for p in outer.children(recursive=True))])
        except psutil.Error:
            pass

    async def step(self, code: str, timeout_s: float = STEP_TIMEOUT_S):
        self.note()
        try:
            with anyio.fail_after(timeout_s + HANG_GUARD_S):
                observation = await self.env.step(code, timeout_s=timeout_s)
        except TimeoutError:
            pytest.fail(f"the step did not come back: its {timeout_s} s budget was not enforced")
        self.note()
        return observation

    async def reset(self) -> None:
        await self.env.reset()
        self.note()

    async def works(self) -> None:
        """The env keeps serving: a small step succeeds."""
        observation = await self.step("21 * 2")
        assert observation.status is StepStatus.OK, observation.stderr
        assert observation.return_value == "42"


@pytest.fixture
async def episode(pool):
    env = KernelEnv(pool=pool, step_timeout_s=STEP_TIMEOUT_S, interrupt_grace_s=0.5)
    hostile = HostileEpisode(env)
    try:
        await hostile.reset()
        yield hostile
    finally:
        await env.close()
    deadline = time.monotonic() + 15
    while True:
        left = [item for fp in hostile.footprints.values() for item in fp.leftovers()]
        if not left or time.monotonic() > deadline:
            break
        await anyio.sleep(0.1)
    for fp in hostile.footprints.values():  # never leave them to the next test
        for pid in fp.pids:
            if _running(pid):
                psutil.Process(pid).kill()
    assert not left, f"the episode left behind: {left}"


# -- runaway code ------------------------------------------------------------------------


async def test_infinite_loop_is_interrupted_and_state_kept(episode):
    await episode.step("kept = 1")
    obs = await episode.step("while True:\n    pass")
    assert obs.status is StepStatus.TIMEOUT
    assert obs.metadata["kernel_replaced"] is False
    assert (await episode.step("kept")).return_value == "1"


async def test_loop_ignoring_sigint_gets_its_kernel_replaced(episode):
    obs = await episode.step(
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    )
    assert obs.status is StepStatus.TIMEOUT
    assert obs.metadata["kernel_replaced"] is True
    after = await episode.step("1")
    assert after.kernel_restarted is True
    await episode.works()


async def test_os_exit_is_kernel_died(episode):
    obs = await episode.step("import os\nos._exit(1)")
    assert obs.status is StepStatus.KERNEL_DIED
    assert obs.metadata["kernel_exit_code"] == 1
    await episode.works()


async def test_segfault_through_ctypes_is_kernel_died(episode):
    obs = await episode.step(SEGFAULT)
    assert obs.status is StepStatus.KERNEL_DIED
    assert "SIGSEGV" in obs.error.evalue
    await episode.works()


async def test_unbounded_recursion_is_an_error(pool, episode):
    only_at(pool, *DEFAULT_LEVEL_ONLY, reason="slow and level-independent: default level only")
    # IPython's default traceback mode takes seconds to format 3,000 frames: a longer budget.
    obs = await episode.step("def down(n):\n    return down(n + 1)\ndown(0)", timeout_s=30)
    assert obs.status is StepStatus.ERROR
    assert obs.error.ename == "RecursionError"
    await episode.works()


async def test_recursion_through_c_past_the_stack_is_kernel_died(episode):
    obs = await episode.step(
        "import sys\nsys.setrecursionlimit(10**6)\n"
        "def down(n):\n    return list(map(down, [n + 1]))\ndown(0)"
    )
    assert obs.status is StepStatus.KERNEL_DIED
    await episode.works()


async def test_input_fails_at_once(episode):
    obs = await episode.step("input('name? ')")
    assert obs.status is StepStatus.ERROR
    assert obs.error.ename == "StdinNotImplementedError"
    await episode.works()


async def test_printing_100_mb_is_truncated(pool, episode):
    only_at(pool, *DEFAULT_LEVEL_ONLY, reason="slow and level-independent: default level only")
    obs = await episode.step(
        "import sys\nchunk = 'x' * (1024 * 1024)\nfor _ in range(100):\n    sys.stdout.write(chunk)",
        timeout_s=30,
    )
    assert obs.status is StepStatus.OK
    assert obs.output_truncated is True
    assert len(obs.stdout) < 2 * 1024 * 1024
    assert (await episode.step("print('small')")).stdout == "small\n"


# -- resource bombs (limits and bwrap only: without limits they would hurt the machine) -----


async def test_allocating_past_the_memory_limit_is_a_memory_error(pool, episode):
    only_at(pool, "limits", "bwrap")
    obs = await episode.step("huge = bytearray(64 * 1024**3)")
    assert obs.status is StepStatus.ERROR
    assert obs.error.ename == "MemoryError"
    obs = await episode.step(
        "def hog():\n    chunks = []\n    while True:\n        chunks.append(bytearray(128 * 1024**2))\n"
        "hog()",
        # It writes 1 GiB (bytearray zero-fills), each page charged to the memory cgroup.
        timeout_s=15,
    )
    assert obs.status is StepStatus.ERROR
    assert obs.error.ename == "MemoryError"
    assert (await episode.step("1")).kernel_restarted is False  # the kernel survived


async def test_fork_bomb_is_capped_and_cleaned_up(pool, episode):
    only_at(pool, "limits", "bwrap", need_cgroup=True)
    obs = await episode.step("import os\nwhile True:\n    os.fork()")
    # The kernel's own fork fails once the group is full (an error), or the step runs out.
    assert obs.status in (StepStatus.ERROR, StepStatus.TIMEOUT)
    if episode.env.kernel is not None:  # it survived: its group holds no more than the cap
        cgroup = episode.env.kernel.manager.provisioner.pids_cgroup
        # (the bomb's children may all have exited by now: only the cap is an invariant)
        assert 1 <= len(cgroup.pids()) <= LIMITS["max_processes"]
    await episode.works()


async def test_thread_and_detached_process_do_not_outlive_the_episode(pool, episode):
    # At limits only the cgroup finds escaped processes; at bwrap the PID namespace does too.
    only_at(pool, "limits", "bwrap", need_cgroup=level_of(pool) == "limits")
    marker = f"kernelenv-outlive-{uuid.uuid4().hex}"
    obs = await episode.step(
        "import subprocess, sys, threading, time\n"
        "threading.Thread(target=time.sleep, args=(600,)).start()\n"
        f"sleeper = [sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}]\n"
        "subprocess.Popen(sleeper, start_new_session=True)\n"
        # A double fork: the shell exits at once and its sleeper is re-parented.
        "subprocess.run(['sh', '-c', '\"$@\" &', 'sh', *sleeper], start_new_session=True)\n"
        "print('started')"
    )
    assert obs.status is StepStatus.OK, obs.stderr
    deadline = time.monotonic() + 10
    while len(_marked(marker)) < 2 and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    assert len(_marked(marker)) == 2
    episode.note()
    await episode.reset()  # the next episode works, and the old one is torn down
    await episode.works()
    deadline = time.monotonic() + 10
    while _marked(marker) and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    assert not _marked(marker)


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if marker in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


# -- isolation: bwrap stops these; the same probes show the hole at the weaker levels ------


async def test_network_connections_fail(pool, episode):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        obs = await episode.step(
            "import socket\n"
            f"for address in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n"
            "    try:\n"
            "        socket.create_connection(address, timeout=1).close()\n"
            "        print('connected', address[0])\n"
            "    except OSError as exc:\n"
            "        print('blocked', address[0], type(exc).__name__)"
        )
        assert obs.status is StepStatus.OK, obs.stderr
        if level_of(pool) == "bwrap":
            assert "connected" not in obs.stdout
            assert "blocked 127.0.0.1" in obs.stdout
            with pytest.raises(BlockingIOError):
                listener.accept()
        else:
            assert "connected 127.0.0.1" in obs.stdout
    await episode.works()


async def test_writing_outside_the_episode_directory(pool, episode, tmp_path):
    target = tmp_path / "escaped.txt"
    obs = await episode.step(
        f"import os\ntry:\n    open({str(target)!r}, 'w').write('x')\n"
        "except OSError as exc:\n    print(type(exc).__name__)\n"
        "open('inside.txt', 'w').write('y')\nprint(os.path.exists('inside.txt'))"
    )
    assert obs.status is StepStatus.OK, obs.stderr
    assert obs.stdout.endswith("True\n")  # its own directory is writable
    if level_of(pool) == "limits" and files_confined(pool):
        assert obs.stdout.startswith("PermissionError")  # Landlock: the host's /tmp is out
        assert not target.exists()
    elif level_of(pool) == "bwrap":
        # /tmp is private: the write landed in the sandbox's own tmpfs, not on the host.
        assert not target.exists()
        probe = f"/usr/kernelenv-escape-{uuid.uuid4().hex}"
        obs = await episode.step(f"open({probe!r}, 'w')")
        assert obs.status is StepStatus.ERROR
        assert "Read-only file system" in obs.error.evalue
        assert not Path(probe).exists()
    else:
        assert target.read_text() == "x"
    await episode.works()


async def test_reading_another_episodes_files(pool, episode):
    async with KernelEnv(pool=pool, step_timeout_s=STEP_TIMEOUT_S) as neighbour:
        await neighbour.reset()
        secret = uuid.uuid4().hex
        await neighbour.step(f"open('secret.txt', 'w').write({secret!r})")
        path = neighbour.kernel.work_dir / "secret.txt"
        neighbour_id = neighbour.kernel.kernel_id
        assert path.read_text() == secret
        obs = await episode.step(
            "import os\n"
            f"try:\n    print(open({str(path)!r}).read())\n"
            "except OSError as exc:\n    print(type(exc).__name__)\n"
            f"try:\n    print(sorted(os.listdir({str(pool.root)!r})))\n"
            "except OSError as exc:\n    print(type(exc).__name__)\n"
        )
    assert obs.status is StepStatus.OK, obs.stderr
    if level_of(pool) == "bwrap":
        assert secret not in obs.stdout
        assert "FileNotFoundError" in obs.stdout
        assert neighbour_id not in obs.stdout  # the pool's other kernels are invisible
    elif files_confined(pool):  # Landlock: the pool's root is out of reach
        assert secret not in obs.stdout
        assert obs.stdout.startswith("PermissionError")
    else:
        assert secret in obs.stdout
    await episode.works()


async def test_reading_the_servers_environment(pool, episode):
    obs = await episode.step(
        "import glob, os\n"
        f"print(os.environ.get({SECRET_NAME!r}))\n"
        "found = []\n"
        "for path in glob.glob('/proc/[0-9]*/environ'):\n"
        "    try:\n"
        f"        if {SECRET_VALUE.encode()!r} in open(path, 'rb').read():\n"
        "            found.append(path)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(len(found))"
    )
    assert obs.status is StepStatus.OK, obs.stderr
    in_env, in_proc = obs.stdout.split()
    if level_of(pool) == "none":
        assert in_env == SECRET_VALUE
    else:
        assert in_env == "None"  # scrubbed from the kernel's environment
    if files_confined(pool):
        # bwrap: no host process is visible; Landlock: ptrace-mode reads stay in the episode.
        assert in_proc == "0"
    await episode.works()


# -- the server killed with SIGKILL --------------------------------------------------------


async def test_a_sigkilled_server_leaves_no_kernel_behind():
    if not bwrap_available():
        pytest.skip("bubblewrap is not usable here")
    runtime = Path(tempfile.mkdtemp(prefix="kr-"))
    server, info = start_plain_server(
        runtime, "--pool-size", "2", "--sandbox", "bwrap", "--no-token"
    )  # fmt: skip
    try:
        base = info["url"]
        sockets = []
        try:
            for _ in range(8):
                ws = await connect(base.replace("http", "ws") + "/ws")
                sockets.append(ws)
                await ws.send('{"type": "reset", "data": {}}')
            for ws in sockets:
                assert json.loads(await ws.recv())["type"] == "observation"
            # Through the server too, a crash is an observation and the session goes on.
            await sockets[0].send(json.dumps({"type": "step", "data": {"code": SEGFAULT}}))
            died = json.loads(await sockets[0].recv())["data"]["observation"]
            assert died["exit_code"] == 137, died
            await sockets[0].send(json.dumps({"type": "step", "data": {"code": "print(6 * 7)"}}))
            after = json.loads(await sockets[0].recv())["data"]["observation"]
            assert after["stdout"] == "42\n"
            for ws in sockets:
                await ws.send('{"type": "step", "data": {"code": "import time; time.sleep(120)"}}')
            # The 8 kernels are forked from the template (which shares their command).
            deadline = time.monotonic() + 60
            while True:
                tree = psutil.Process(server.pid).children(recursive=True)
                kernels = [p for p in tree if "runtime.template" in " ".join(_cmdline(p))]
                if len(kernels) >= 8 or time.monotonic() > deadline:
                    break
                await anyio.sleep(0.1)
            assert len(kernels) >= 8
            command = _cmdline(kernels[0])
            # The template's socket is in the server pool's directory.
            server_root = Path(command[command.index("--socket") + 1]).parents[1]
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=10)
            deadline = time.monotonic() + 15
            while any(_running(p.pid) for p in tree) and time.monotonic() < deadline:
                await anyio.sleep(0.1)
            left = [p.pid for p in tree if _running(p.pid)]
            for pid in left:
                psutil.Process(pid).kill()
            assert not left, f"processes outlived the server: {left}"
            # What the dead server could not remove (its directories, the episodes' tmpfs
            # mounts, their cgroups), the next pool's start-up reaps.
            # (A pool started meanwhile by another test process reaps them as well: either
            # way, nothing of the dead server may be left once a start-up has reaped.)
            stale = _server_cgroups(server.pid)
            reap_stale_roots()
            assert not server_root.exists() and not mounts_under(server_root)
            reap_stale_cgroups()
            assert not [p for p in stale if p.exists()]
        finally:
            for ws in sockets:
                with anyio.CancelScope(shield=True):
                    await ws.close()
    finally:
        if server.poll() is None:
            server.kill()
        stop(server)
        shutil.rmtree(runtime, ignore_errors=True)


def _server_cgroups(pid: int) -> list[Path]:
    parents = [p for p in (cgroup_parent(), memory_cgroup_parent()) if p is not None]
    return [path for parent in parents for path in parent.glob(f"kernelenv-{pid}-*")]


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []
