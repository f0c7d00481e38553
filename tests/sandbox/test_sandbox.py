"""Sandbox settings, the loud fallback, and the containment real kernels actually get."""

from __future__ import annotations

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
async def test_answer_keys_and_hidden_folders_are_empty_inside_bwrap(no_leaks):
    """The task library (solutions, graders) and owner-hidden folders read as empty."""
    import tempfile
    from pathlib import Path

    from kernelenv.tasks.library import answer_key_dirs, default_tasks_dir

    tasks = default_tasks_dir()
    # Outside /tmp (which bwrap replaces anyway), as a server's journal is.
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    secret_dir = Path(tempfile.mkdtemp(prefix="hidden-journal-", dir=artifacts))
    (secret_dir / "other-episode.jsonl").write_text("{}")
    try:
        assert any(tasks.glob("*.ipynb"))
        # Whoever builds a pool for task episodes names what to hide (the sandbox knows no tasks).
        hidden = [*answer_key_dirs(), secret_dir]
        async with KernelPool(size=0, sandbox="bwrap", hidden_paths=hidden) as pool:
            async with KernelEnv(pool=pool) as env:
                await env.reset()
                obs = await env.step(
                    f"import os\n(os.listdir({str(tasks)!r}), os.listdir({str(secret_dir)!r}))"
                )
                assert obs.status is StepStatus.OK, obs.stderr
                assert obs.return_value == "([], [])"
    finally:
        shutil.rmtree(secret_dir)


def test_bwrap_mount_order_keeps_hidden_folders_hidden_inside_bound_ones():
    """A checkout under /tmp is bound back, its task library stays hidden, the connection
    file inside the hidden pool root stays readable: later mounts cover earlier ones."""
    from kernelenv.sandbox.config import bwrap_args

    args = bwrap_args(
        SandboxConfig(level="bwrap"),
        writable=["/tmp/pool/k1/work"],
        hidden=["/tmp/pool", "/tmp/checkout/tasks"],
        readable=["/tmp/pool/k1/run/connection.json"],
        system=["/tmp/checkout"],
    )

    def position(*mount: str) -> int:
        for i in range(len(args) - len(mount) + 1):
            if tuple(args[i : i + len(mount)]) == mount:
                return i
        raise AssertionError(f"{mount} not in {args}")

    private_tmp = position("--tmpfs", "/tmp")
    checkout = position("--ro-bind", "/tmp/checkout", "/tmp/checkout")
    tasks = position("--tmpfs", "/tmp/checkout/tasks")
    pool_root = position("--tmpfs", "/tmp/pool")
    connection = position("--ro-bind", *["/tmp/pool/k1/run/connection.json"] * 2)
    work = position("--bind", "/tmp/pool/k1/work", "/tmp/pool/k1/work")
    assert private_tmp < checkout < tasks < connection < work
    assert pool_root < connection
