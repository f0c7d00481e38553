"""The guard host: a pool's frame guards run in a process of their own, which ends with its
owner, and whose death fails a step clearly instead of hanging it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from kernelenv import KernelEnv, KernelPool

pytestmark = pytest.mark.anyio


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _listening_unix_paths(pid: int) -> set[str]:
    """The Unix sockets process ``pid`` listens on (from /proc/net/unix, by socket inode)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    paths = set()
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            # Flags 00010000: __SO_ACCEPTCON, a listening socket.
            if len(fields) >= 8 and fields[6] in inodes and fields[3] == "00010000":
                paths.add(fields[7])
    return paths


async def test_the_guards_relay_in_their_own_process_not_in_the_pools(no_leaks):
    """What a kernel costs the process that drives it is its ZMQ sockets, not its relay: the
    guard's listening sockets are the guard host's, and this process holds none of them."""
    async with KernelPool(size=0, sandbox="none") as pool:
        envs = [KernelEnv(pool=pool) for _ in range(5)]
        await envs[0].reset()
        assert (await envs[0].step("print(6 * 7)")).stdout == "42\n"
        before = _descriptors()
        for env in envs[1:]:
            await env.reset()
            assert (await env.step("print(6 * 7)")).stdout == "42\n"
        per_kernel = (_descriptors() - before) / 4
        host = pool.guards.pid
        assert host is not None and psutil.Process(host).ppid() == os.getpid()
        guards_dir = str(pool.root / "guards")
        hosted = {p for p in _listening_unix_paths(host) if p.startswith(guards_dir)}
        own = {p for p in _listening_unix_paths(os.getpid()) if p.startswith(guards_dir)}
        for env in envs:
            await env.close()
    # shell, iopub and control of each of the five kernels
    assert len(hosted) == 15, hosted
    assert not own
    # Measured 14 (4 ZMQ sockets and their event fds, 4 for two connection monitors, a
    # pidfd); 30 with the guards in this process. Not a timing: a count of descriptors.
    assert per_kernel <= 16, per_kernel


async def test_a_dead_guard_host_fails_the_step_clearly_and_a_reset_recovers(no_leaks):
    async with KernelPool(size=0, sandbox="none") as pool, KernelEnv(pool=pool) as env:
        await env.reset()
        await env.step("x = 1")
        dead = pool.guards.pid
        os.kill(dead, signal.SIGKILL)
        psutil.Process(dead).wait(timeout=10)
        obs = await env.step("print(x + 1)")
        assert obs.status.value == "kernel_died"
        assert obs.error is not None and obs.error.ename == "KernelConnectionLost"
        assert "frame guard host" in obs.error.evalue
        await env.reset()  # a new kernel, through a new guard host
        assert (await env.step("print(5)")).stdout == "5\n"
        assert pool.guards.pid != dead


def test_a_killed_owner_takes_its_guard_host_with_it():
    """The host ends when its owner's end of their socket pair closes, SIGKILL included."""
    script = (
        "import anyio, os\n"
        "from kernelenv import KernelEnv\n"
        "async def main():\n"
        "    env = KernelEnv(sandbox='none')\n"
        "    await env.reset()\n"
        "    await env.step('1')\n"
        "    print(env.pool.guards.pid, flush=True)\n"
        "    os.kill(os.getpid(), 9)\n"
        "anyio.run(main)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip  (it kills itself)
    host_pid = int(proc.stdout.split()[0])
    end = time.monotonic() + 15
    alive = True
    while alive and time.monotonic() < end:
        try:
            alive = psutil.Process(host_pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        time.sleep(0.05)
    if alive:
        psutil.Process(host_pid).kill()
    assert not alive, "the guard host outlived its owner"


async def test_only_the_owner_can_ask_the_host_for_guards(no_leaks):
    """The host's requests come over a socket pair it inherited: it listens on nothing a
    kernel (or anyone) could connect to in order to ask for a guard."""
    async with KernelPool(size=0, sandbox="none") as pool, KernelEnv(pool=pool) as env:
        await env.reset()
        listening = _listening_unix_paths(pool.guards.pid)
        guards_dir = str(pool.root / "guards")
        assert listening and all(p.startswith(guards_dir) for p in listening), listening
        for path in listening:  # each is a relay to the kernel, speaking ZMTP, not requests
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(5)
                probe.connect(path)
                probe.sendall(b'{"op": "open"}\n')
                assert probe.recv(64)[:1] == b"\xff"  # the kernel's ZMTP greeting
        assert (await env.step("print(1)")).stdout == "1\n"


async def test_a_request_cancelled_while_waiting_leaves_no_answer_for_the_next(tmp_path):
    """A caller cancelled between its request and the answer (a pool closing cancels the
    kernel starts in flight) must not hand its answer to the next caller, whose kernel would
    then be connected through another kernel's guard."""
    import asyncio

    from kernelenv.runtime.guard_host import GuardHost

    ports = {"shell_port": 1, "iopub_port": 2, "control_port": 3}
    host = GuardHost(tmp_path / "guards")
    try:
        first = await host.open(str(tmp_path / "k1"), ports, 1 << 20)
        for turns in range(6):  # cancelled at each point of its exchange
            task = asyncio.ensure_future(host.open(str(tmp_path / "k2"), ports, 1 << 20))
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await first.aclose()
        last = await host.open(str(tmp_path / "k3"), ports, 1 << 20)
        assert last.prefix != first.prefix
        await host._request({"op": "close", "prefix": "none"})  # a round trip: orphans closed
        left = sorted(p.name for p in (tmp_path / "guards").iterdir())
        assert left == [os.path.basename(os.path.dirname(last.prefix))], left
    finally:
        await host.aclose()
