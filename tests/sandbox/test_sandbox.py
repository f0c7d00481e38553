"""Sandbox settings, the loud fallback, and the containment real kernels actually get."""

from __future__ import annotations

import itertools
import logging
import os
import shutil

import nbformat
import pytest
from jupyter_client import AsyncKernelManager
from nbclient import NotebookClient

from kernelenv import (
    KernelEnv,
    KernelPool,
    SandboxConfig,
    SandboxFallbackWarning,
    SandboxUnavailableError,
    StepStatus,
)
from kernelenv.sandbox.cgroup import cgroup_parent
from kernelenv.sandbox.config import bwrap_available, bwrap_problem, scrub_env

needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable here")

CONFIG = {"memory_mb": 1536, "cpu_s": 300, "file_size_mb": 64, "open_files": 256,
          "max_processes": 100}  # fmt: skip


@pytest.fixture
def without_bwrap(tmp_path, monkeypatch):
    """A PATH with the util-linux tools but no bwrap; the availability check is redone."""
    for tool in ("prlimit", "setpriv", "sh"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(tmp_path))
    bwrap_problem.cache_clear()
    yield
    monkeypatch.undo()
    bwrap_problem.cache_clear()


def test_fallback_from_the_default_is_loud(without_bwrap, caplog):
    with (
        caplog.at_level(logging.WARNING, logger="kernelenv.sandbox.config"),
        pytest.warns(SandboxFallbackWarning, match="bwrap is not on PATH"),
    ):
        config = SandboxConfig().resolved()
    assert config.level == "limits"
    assert "resource limits only" in caplog.text


def test_an_explicit_level_that_is_unavailable_raises(without_bwrap):
    with pytest.raises(SandboxUnavailableError, match="bwrap is not on PATH"):
        SandboxConfig(level="bwrap").resolved()
    assert SandboxConfig(level="limits").resolved().level == "limits"


def test_without_any_tool_the_fallback_says_uncontained(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    bwrap_problem.cache_clear()
    try:
        with pytest.warns(SandboxFallbackWarning, match="UNCONTAINED"):
            assert SandboxConfig().resolved().level == "none"
        with pytest.raises(SandboxUnavailableError, match="prlimit"):
            SandboxConfig(level="limits").resolved()
    finally:
        monkeypatch.undo()
        bwrap_problem.cache_clear()


@needs_bwrap
def test_the_default_is_the_strongest_level():
    assert SandboxConfig().resolved().level == "bwrap"
    assert KernelPool(size=0).sandbox.level == "bwrap"


@pytest.mark.anyio
async def test_kernelenv_sandbox_sets_the_python_apis_default_level(monkeypatch, no_leaks):
    """``KERNELENV_SANDBOX`` is not for the server alone: a pool made with no sandbox argument
    (as ``KernelEnv()`` makes its own) takes its level from it too."""
    monkeypatch.setenv("KERNELENV_SANDBOX", "limits")
    async with KernelPool(size=0) as pool, KernelEnv(pool=pool) as env:
        assert pool.sandbox.level == "limits"
        await env.reset()
        obs = await env.step("import resource; resource.getrlimit(resource.RLIMIT_AS)[0]")
        assert obs.return_value == str(pool.sandbox.memory_mb << 20)
    monkeypatch.setenv("KERNELENV_SANDBOX", "nonsense")
    with pytest.raises(ValueError, match="level"):
        KernelPool(size=0)


def test_secrets_are_scrubbed_from_the_environment():
    env = {
        "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8",
        "OPENAI_API_KEY": "x", "GITHUB_TOKEN": "x", "db_password": "x",
        "MY_SECRET": "x", "AWS_SESSION_TOKEN": "x", "AWS_REGION": "x", "SSH_KEYS": "x",
    }  # fmt: skip
    kept = scrub_env(env, SandboxConfig().secret_env_patterns)
    assert kept == {"PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def test_settings_are_validated():
    with pytest.raises(ValueError):
        SandboxConfig(level="docker")
    with pytest.raises(ValueError):
        SandboxConfig(memory_mb=0)
    with pytest.raises(ValueError, match="must be below episode_memory_mb"):
        SandboxConfig(episode_disk_mb=512, episode_memory_mb=512)
    assert SandboxConfig(episode_disk_mb=512, episode_memory_mb=None).episode_disk_mb == 512
    with pytest.raises(ValueError, match="not to an env that shares it"):
        KernelEnv(pool=KernelPool(size=0, sandbox="none"), sandbox="limits")


PROBE = (
    "import os, resource\n"
    "status = open('/proc/self/status').read()\n"
    "print(resource.getrlimit(resource.RLIMIT_AS)[1] // 2**20,\n"
    "      resource.getrlimit(resource.RLIMIT_CPU)[1],\n"
    "      resource.getrlimit(resource.RLIMIT_FSIZE)[1] // 2**20,\n"
    "      resource.getrlimit(resource.RLIMIT_NOFILE)[1],\n"
    "      status.split('CapEff:')[1].split()[0], os.getcwd())\n"
    "try:\n"
    "    resource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n"
    "    print('raised')\n"
    "except ValueError:\n"
    "    print('kept')"
)


@pytest.mark.anyio
@pytest.mark.parametrize("level", ["limits", pytest.param("bwrap", marks=needs_bwrap)])
async def test_kernels_get_the_limits_and_cannot_raise_them(level, no_leaks):
    async with KernelEnv(pool_size=1, sandbox=SandboxConfig(level=level, **CONFIG)) as env:
        await env.reset()
        obs = await env.step(PROBE)
        assert obs.status is StepStatus.OK, obs.stderr
        limits, verdict = obs.stdout.splitlines()
        memory, cpu, fsize, nofile, caps, cwd = limits.split()
        assert (int(memory), int(cpu), int(fsize), int(nofile)) == (1536, 300, 64, 256)
        assert int(caps, 16) == 0  # no capabilities: root in the kernel cannot undo them
        assert verdict == "kept"
        assert cwd == str(env.kernel.work_dir)
        cgroup = env.kernel.manager.provisioner.pids_cgroup
        if cgroup_parent() is not None:
            assert (cgroup.path / "pids.max").read_text().strip() == "100"
            assert env.kernel.pid in cgroup.pids()


@pytest.mark.anyio
@needs_bwrap
async def test_nbclient_starting_from_the_kernelspec_is_contained(tmp_path, no_leaks):
    """Containment lives in the kernelspec's provisioner, so other tools get it too."""
    async with KernelPool(size=0, sandbox="bwrap") as pool:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        manager = AsyncKernelManager(
            kernel_name=pool.kernel_name,
            kernel_spec_manager=pool.spec_manager,
            transport="ipc",
            ip=str(run_dir / "kernel"),
            connection_file=str(run_dir / "connection.json"),
        )
        notebook = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell("import os, socket\nprint(os.getpid())\n"
                                             "print(socket.gethostname())")]
        )  # fmt: skip
        client = NotebookClient(
            notebook, km=manager, resources={"metadata": {"path": str(tmp_path)}}
        )
        try:
            await client.async_execute(cleanup_kc=True)
        finally:  # nbclient leaves a kernel manager it was given running
            if manager.has_kernel:
                await manager.shutdown_kernel(now=True)
        pid, hostname = notebook.cells[0].outputs[0]["text"].split()
        assert pid == "2"  # its own PID namespace
        assert hostname == "kernelenv"
        assert os.getpid() != 2


@pytest.mark.anyio
@pytest.mark.parametrize("level", ["limits", pytest.param("bwrap", marks=needs_bwrap)])
async def test_without_a_cgroup_a_watchdog_caps_the_process_count(level, monkeypatch, no_leaks):
    from kernelenv.sandbox import provisioner

    monkeypatch.setattr(provisioner, "cgroup_parent", lambda: None)  # a machine without one
    provisioner._warn_no_cgroup.cache_clear()
    config = SandboxConfig(level=level, max_processes=20)
    async with KernelEnv(pool_size=0, sandbox=config) as env:
        with pytest.warns(SandboxFallbackWarning, match="watchdog"):
            await env.reset()  # the kernel start announces it
        assert env.kernel.manager.provisioner.pids_cgroup is None
        obs = await env.step(
            "import subprocess, time\n"
            "sleepers = [subprocess.Popen(['sleep', '60']) for _ in range(40)]\n"
            "time.sleep(30)",
            timeout_s=20,
        )
        assert obs.status is StepStatus.KERNEL_DIED
        # The replacement kernel's start warns again (the warning is cached per process).
        provisioner._warn_no_cgroup.cache_clear()
        with pytest.warns(SandboxFallbackWarning, match="watchdog"):
            assert (await env.step("1 + 1")).return_value == "2"
    provisioner._warn_no_cgroup.cache_clear()


@needs_bwrap
@pytest.mark.anyio
async def test_a_bwrap_kernel_sees_only_what_its_interpreter_needs(no_leaks):
    """No checkout, task library or journal: the root holds the allow-list and nothing else,
    and nothing outside the episode's own folders is writable."""
    import tempfile
    from pathlib import Path

    from kernelenv.tasks.library import default_tasks_dir

    tasks = default_tasks_dir()
    checkout = Path(__file__).resolve().parents[2]
    artifacts = checkout / "test-artifacts"  # outside /tmp, as a server's journal is
    artifacts.mkdir(exist_ok=True)
    secret_dir = Path(tempfile.mkdtemp(prefix="hidden-journal-", dir=artifacts))
    (secret_dir / "other-episode.jsonl").write_text("{}")
    try:
        assert any(tasks.glob("*.ipynb"))
        async with KernelPool(size=0, sandbox="bwrap") as pool, KernelEnv(pool=pool) as env:
            await env.reset()
            obs = await env.step(
                "import os, kernelenv.tasks.review  # graders import kernelenv\n"
                "def probe(path):\n"
                "    try:\n"
                "        return sorted(os.listdir(path))\n"
                "    except OSError as exc:\n"
                "        return type(exc).__name__\n"
                f"print(probe({str(tasks)!r}), probe({str(secret_dir)!r}),\n"
                f"      probe({str(checkout / '.git')!r}), probe({str(checkout)!r}))\n"
                "for place in ['/', '/etc', '/usr', '/dev', '/root']:\n"
                "    try:\n"
                "        open(os.path.join(place, 'x'), 'w')\n"
                "        print(place, 'writable')\n"
                "    except OSError as exc:\n"
                "        print(place, exc.strerror)\n"
                "print(os.path.exists('/etc/shadow'))"
            )
        assert obs.status is StepStatus.OK, obs.stderr
        lines = obs.stdout.splitlines()
        assert lines[0].startswith("FileNotFoundError FileNotFoundError FileNotFoundError")
        assert ".git" not in lines[0] and "tasks" not in lines[0]  # only kernelenv/, .venv/
        for line in lines[1:-1]:
            assert line.endswith("Read-only file system"), line
        assert lines[-1] == "False"
    finally:
        shutil.rmtree(secret_dir)


def test_bwrap_mount_order_keeps_masks_over_binds_and_the_root_read_only():
    """The private /tmp first (a venv under /tmp is bound over it), masks after the binds they
    mask, the episode's folders after the masks (its byte budget before the socket folder and
    connection file inside it), and the read-only remounts last."""
    import sys

    from kernelenv.sandbox.bwrap import bwrap_args

    work, run = "/tmp/pool/k1/fs/work", "/tmp/pool/k1/fs/run"
    args = bwrap_args(
        sys.executable,
        work=work,
        run_dir=run,
        connection_file=run + "/connection.json",
        episode_root="/tmp/pool/k1/fs",
        episode_tmp="/tmp/pool/k1/fs/tmp",
        episode_shm="/tmp/pool/k1/fs/shm",
        hidden=[sys.prefix + "/lib"],
    )

    def position(*mount: str) -> int:
        for i in range(len(args) - len(mount) + 1):
            if tuple(args[i : i + len(mount)]) == mount:
                return i
        raise AssertionError(f"{mount} not in {args}")

    assert "--ro-bind" not in args[: position("--bind", "/tmp/pool/k1/fs/tmp", "/tmp")]
    assert ("/", "/") not in itertools.pairwise(args)  # never the whole root filesystem
    venv = position("--ro-bind", sys.prefix, sys.prefix)
    mask = position("--tmpfs", sys.prefix + "/lib")
    connection = position("--ro-bind", *[run + "/connection.json"] * 2)
    budget = position("--bind", "/tmp/pool/k1/fs", "/tmp/pool/k1/fs")
    sockets = position("--bind", run, run)
    assert mask < budget < sockets < connection
    own = position("--bind", work, work)
    last = position("--remount-ro", "/dev", "--remount-ro", "/")
    assert position("--bind", "/tmp/pool/k1/fs/shm", "/dev/shm") < venv < mask < connection
    assert connection < own < last
