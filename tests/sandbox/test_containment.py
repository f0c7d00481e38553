"""The sandbox's attacks of issue #14, carried out by real kernels at the levels that stop them.

Answer keys through git and through other installed copies, /dev and /dev/shm filled, many
files past the working directory's budget, a second pool's connection file, a memory hog. After
each: a new episode runs ``1+1`` and nothing of the old one (mount, cgroup, directory, process)
is left.
"""

from __future__ import annotations

import json
import shutil
import site
import tempfile
import uuid
from pathlib import Path

import anyio
import psutil
import pytest

from kernelenv import KernelEnv, KernelPool, SandboxConfig, StepStatus
from kernelenv.sandbox.cgroup import memory_cgroup_parent
from kernelenv.sandbox.config import bwrap_available
from kernelenv.sandbox.episode_fs import episode_fs_problem, mounts_under
from kernelenv.sandbox.landlock import landlock_abi

pytestmark = pytest.mark.anyio

CHECKOUT = Path(__file__).resolve().parents[2]
ARTIFACTS = CHECKOUT / "test-artifacts"  # outside /tmp, as a server's pools or venvs may be
BUDGET_MB = 64
CONFIG = {"episode_disk_mb": BUDGET_MB, "episode_memory_mb": 384, "memory_mb": None,
          "cpu_s": 300, "max_processes": 64}  # fmt: skip
STEP_S = 30.0


def _levels() -> list:
    levels = ["none"]  # stops nothing: shows that each probe does find the hole

    if bwrap_available():
        levels.append("bwrap")
    # limits confines files only with Landlock, which needs the episode fs (a root server).
    if landlock_abi() >= 1 and episode_fs_problem() is None:
        levels.append("limits")
    return levels


@pytest.fixture(scope="module", params=_levels())
async def pool(request, anyio_backend):
    async with KernelPool(size=1, sandbox=SandboxConfig(level=request.param, **CONFIG)) as pool:
        yield pool


class Footprints:
    """What each kernel of an env left on the host: processes, cgroups, mounts, directory."""

    def __init__(self, env: KernelEnv) -> None:
        self.env = env
        self.kernels: dict[str, tuple[Path, set[int], list[Path]]] = {}

    def note(self) -> None:
        kernel = self.env.kernel
        if kernel is None:
            return
        _, pids, cgroups = self.kernels.setdefault(kernel.kernel_id, (kernel.directory, set(), []))
        cgroup = getattr(kernel.manager.provisioner, "cgroup", None)
        if cgroup is not None:
            cgroups[:] = cgroup.paths
            pids.update(cgroup.pids())
        if kernel.pid:
            pids.add(kernel.pid)

    def leftovers(self) -> list[str]:
        left = []
        for directory, pids, cgroups in self.kernels.values():
            left += [f"pid {p}" for p in pids if psutil.pid_exists(p) and _alive(p)]
            left += [f"cgroup {c}" for c in cgroups if c.exists()]
            left += [f"mount {m}" for m in mounts_under(directory)]
            left += [f"directory {directory}"] if directory.exists() else []
        return left


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
async def env(pool):
    """An episode on the level's pool; afterwards a new one runs 1+1 and nothing is left."""
    env = KernelEnv(pool=pool, step_timeout_s=STEP_S, interrupt_grace_s=0.5)
    footprints = Footprints(env)
    try:
        await env.reset()
        footprints.note()
        yield env, footprints
    finally:
        footprints.note()
        await env.close()
    async with KernelEnv(pool=pool) as fresh:
        await fresh.reset()
        assert (await fresh.step("1+1")).return_value == "2"
    for _ in range(150):
        left = footprints.leftovers()
        if not left:
            break
        await anyio.sleep(0.1)
    assert not left, f"the episode left behind: {left}"


def level_of(env_and_notes) -> str:
    return env_and_notes[0].pool.sandbox.level


def contained_only(env_and_notes) -> None:
    if level_of(env_and_notes) == "none":
        pytest.skip("level none bounds nothing: this would fill the host")


async def run(env_and_notes, code: str, timeout_s: float = STEP_S):
    env, notes = env_and_notes
    notes.note()
    observation = await env.step(code, timeout_s=timeout_s)
    notes.note()
    return observation


# -- answer keys -----------------------------------------------------------------------------


async def test_answer_keys_through_git_are_out_of_reach(env):
    if not (CHECKOUT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    task = min(p.name for p in (CHECKOUT / "tasks").glob("*.ipynb"))
    obs = await run(
        env,
        "import subprocess\n"
        f"r = subprocess.run(['git', '-C', {str(CHECKOUT)!r}, 'show', 'HEAD:tasks/{task}'],\n"
        "                   capture_output=True, text=True)\n"
        "print(r.returncode, len(r.stdout), '\"cells\"' in r.stdout)\n"
        "print(r.stderr.strip()[:200])",
    )
    assert obs.status is StepStatus.OK, obs.stderr
    code, size, leaked = obs.stdout.splitlines()[0].split()
    if level_of(env) == "none":
        assert (code, leaked) == ("0", "True")
    else:
        assert code != "0" and size == "0" and leaked == "False", obs.stdout


async def test_answer_keys_in_other_installed_copies_are_out_of_reach(env):
    """A copy in another venv's site-packages, the editable install's copy in this venv, the
    source checkout's tasks/: none can be read, nor found by walking the filesystem."""
    ARTIFACTS.mkdir(exist_ok=True)
    other = Path(tempfile.mkdtemp(prefix="other-venv-", dir=ARTIFACTS))
    secret = uuid.uuid4().hex
    copy = other / "lib" / "python3.11" / "site-packages" / "kernelenv" / "_tasks"
    copy.mkdir(parents=True)
    (copy / "leaked_task.ipynb").write_text(json.dumps({"cells": [], "solution": secret}))
    # An editable install leaves a copy in this venv's site-packages too.
    site_copies = [Path(p) / "kernelenv" / "_tasks" for p in site.getsitepackages()]
    targets = [copy / "leaked_task.ipynb", *(CHECKOUT / "tasks").glob("*.ipynb")]
    targets += [n for d in site_copies if d.is_dir() for n in d.glob("*.ipynb")]
    try:
        obs = await run(
            env,
            "import os, time\n"
            f"targets = {[str(t) for t in targets]!r}\n"
            "read = []\n"
            "for t in targets:\n"
            "    try:\n"
            "        read.append((t, len(open(t).read())))\n"
            "    except OSError:\n"
            "        pass\n"
            "found, deadline, walked = [], time.monotonic() + 20, True\n"
            "for top, dirs, files in os.walk('/'):\n"
            "    dirs[:] = [d for d in dirs if os.path.join(top, d) not in ('/proc', '/sys', '/dev')]\n"
            "    if time.monotonic() > deadline:\n"
            "        walked = False\n"
            "        break\n"
            "    for f in files:\n"
            "        if f.endswith('.ipynb'):\n"
            "            try:\n"
            "                if 'solution' in open(os.path.join(top, f)).read():\n"
            "                    found.append(os.path.join(top, f))\n"
            "            except OSError:\n"
            "                pass\n"
            f"leaked = {str(copy / 'leaked_task.ipynb')!r}\n"
            "print(walked, len(read), len(found), [t for t, _ in read if t == leaked],\n"
            "      [f for f in found if f == leaked])",
            timeout_s=60,
        )
    finally:
        shutil.rmtree(other)
    assert obs.status is StepStatus.OK, obs.stderr
    walked, read, found, read_leaked, found_leaked = obs.stdout.split(" ", 4)
    if level_of(env) == "none":  # read, and found by the walk (a whole host's disk may take
        # longer than its 20 s: then it shows only that the walk itself works)
        assert str(copy / "leaked_task.ipynb") in read_leaked, obs.stdout
        assert walked == "False" or str(copy / "leaked_task.ipynb") in found_leaked, obs.stdout
    else:
        assert secret not in obs.stdout
        assert (read, found) == ("0", "0"), obs.stdout


# -- the byte budget -------------------------------------------------------------------------

FILL = (
    "import errno, os, tempfile\n"
    "TMP = tempfile.gettempdir()  # /tmp in bwrap; at limits, TMPDIR in the episode's budget\n"
    "def fill(path, chunk=8 * 2**20, limit=40):\n"
    "    written = 0\n"
    "    try:\n"
    "        with open(path, 'wb') as f:\n"
    "            for _ in range(limit):\n"
    "                f.write(b'\\1' * chunk)\n"
    "                f.flush()\n"
    "                written += chunk\n"
    "    except OSError as exc:\n"
    "        return written, errno.errorcode[exc.errno]\n"
    "    return written, 'none'\n"
)


async def test_filling_dev_shm_and_dev_stops_at_the_budget(env, pool):
    contained_only(env)
    obs = await run(
        env,
        FILL + "print(*fill('/dev/shm/fill'))\nprint(*fill('/dev/fill'))\n"
        "os.path.exists('/dev/shm/fill') and os.unlink('/dev/shm/fill')\nprint(*fill(TMP + '/f'))",
    )
    assert obs.status is StepStatus.OK, obs.stderr
    shm, dev, tmp = (line.split() for line in obs.stdout.splitlines())
    if pool.sandbox.level == "bwrap":
        assert shm[1] == "ENOSPC" and int(shm[0]) <= BUDGET_MB * 2**20, shm
        assert dev == ["0", "EROFS"], dev
    else:  # the host's /dev/shm and /dev are shared: Landlock keeps the kernel out
        assert shm == ["0", "EACCES"], shm
        assert dev[1] in ("EACCES", "EROFS"), dev
    # After the shm file is removed, /tmp gets the budget back, and stops at it too.
    assert (
        tmp[1] in ("ENOSPC", "EFBIG") and BUDGET_MB // 2 * 2**20 <= int(tmp[0]) <= BUDGET_MB * 2**20
    )
    assert env[0].kernel.fs is not None and env[0].kernel.fs.used_bytes() <= BUDGET_MB * 2**20
    assert (await run(env, "6 * 7")).return_value == "42"  # the kernel survived its ENOSPC


async def test_many_files_cannot_pass_the_working_directory_budget(env):
    contained_only(env)
    obs = await run(
        env,
        FILL + "results = [fill(f'big-{i}.bin', limit=2) for i in range(6)]\n"
        "print(results)\nprint(*fill(TMP + '/more', limit=1))",
    )
    assert obs.status is StepStatus.OK, obs.stderr
    results, more = obs.stdout.splitlines()
    assert "ENOSPC" in results  # each file under RLIMIT_FSIZE, together past the budget
    assert more.split()[1] == "ENOSPC"  # /tmp shares the same budget
    kernel = env[0].kernel
    on_host = sum(p.stat().st_size for p in kernel.work_dir.glob("big-*.bin"))
    assert 0 < on_host <= BUDGET_MB * 2**20  # the host reads the working directory
    assert (await run(env, "import os; os.remove('big-0.bin'); 'ok'")).return_value == "'ok'"


async def test_the_socket_folder_is_inside_the_budget(env):
    """The kernel's socket folder (connection file, IPC sockets) is writable to it: it used to
    be a folder on the host's disk beside the budget, where an episode wrote gigabytes."""
    contained_only(env)
    kernel = env[0].kernel
    run_dir = kernel.run_dir
    obs = await run(env, FILL + f"print(*fill({str(run_dir / 'blob')!r}, limit=12))")
    assert obs.status is StepStatus.OK, obs.stderr
    written, why = obs.stdout.split()
    assert why == "ENOSPC" and int(written) <= BUDGET_MB * 2**20, obs.stdout
    assert (run_dir / "blob").stat().st_size <= BUDGET_MB * 2**20
    assert kernel.fs is not None and run_dir.is_relative_to(kernel.fs.root)
    assert (await run(env, "6 * 7")).return_value == "42"  # its sockets still serve


async def test_a_socket_folder_swapped_for_a_link_leads_the_cleanup_nowhere(pool, tmp_path):
    """The socket folder is in the budget, whose root the kernel may write: it can rename the
    folder and put a link to any host folder in its place. jupyter_client removes the
    connection file and the IPC sockets by path at shutdown: those removals must not follow."""
    if pool.sandbox.level == "none":
        pytest.skip("level none bounds nothing")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    async with KernelEnv(pool=pool) as env:
        await env.reset()
        run_dir = env.kernel.run_dir
        for name in ["connection.json", *(p.name for p in run_dir.glob("kernel-*"))]:
            (decoy / name).write_text("host file")
        planted = sorted(p.name for p in decoy.iterdir())
        obs = await env.step(
            f"import os\nos.rename({str(run_dir)!r}, {str(run_dir) + '-x'!r})\n"
            f"os.symlink({str(decoy)!r}, {str(run_dir)!r})\nprint('swapped')"
        )
        assert obs.stdout.strip() == "swapped", obs.stderr
        directory = env.kernel.directory
    for _ in range(150):  # the pool shuts a released kernel down in the background
        if not directory.exists():
            break
        await anyio.sleep(0.1)
    assert not directory.exists()
    assert sorted(p.name for p in decoy.iterdir()) == planted  # nothing removed through it
    assert "connection.json" in planted


# -- other pools -----------------------------------------------------------------------------


async def test_a_second_pools_connection_file_cannot_be_read_or_used(env, pool):
    ARTIFACTS.mkdir(exist_ok=True)
    root_dir = Path(tempfile.mkdtemp(prefix="pools-", dir=ARTIFACTS))
    try:
        async with (
            KernelPool(size=0, root_dir=root_dir, sandbox=pool.sandbox) as other,
            KernelEnv(pool=other) as victim,
        ):
            await victim.reset()
            connection = victim.kernel.manager.connection_file
            assert Path(connection).is_relative_to(root_dir)
            obs = await run(
                env,
                "from jupyter_client import BlockingKernelClient\n"
                "try:\n"
                f"    info = open({connection!r}).read()\n"
                "except OSError as exc:\n"
                "    print('unreadable', type(exc).__name__)\n"
                "else:\n"
                "    client = BlockingKernelClient()\n"
                f"    client.load_connection_file({connection!r})\n"
                "    client.start_channels()\n"
                "    client.execute_interactive('pwned = True', timeout=10)\n"
                "    print('ran')",
            )
            assert obs.status is StepStatus.OK, obs.stderr
            hijacked = (await victim.step("'pwned' in globals()")).return_value == "True"
            if level_of(env) == "none":
                assert obs.stdout == "ran\n" and hijacked
            else:
                assert obs.stdout.startswith("unreadable"), obs.stdout
                assert not hijacked
    finally:
        shutil.rmtree(root_dir, ignore_errors=True)


async def test_an_episode_sees_no_mount_of_another(pool):
    """Found by an outside red team: a template's child listed the other episodes' folders in
    /proc/self/mountinfo (their file systems had reached the template by propagation), and
    each copy kept the other episode's files in memory after it ended."""
    if pool.sandbox.level != "bwrap":
        pytest.skip("only bwrap gives an episode mounts of its own")
    async with KernelPool(size=0, sandbox=pool.sandbox) as own, KernelEnv(pool=own) as victim:
        await victim.reset()
        await victim.step("open('notes.txt', 'w').write('mine')")
        async with KernelEnv(pool=own) as attacker:  # started after the victim's mounts
            await attacker.reset()
            seen = await attacker.step("print(open('/proc/self/mountinfo').read())")
            assert seen.status is StepStatus.OK, seen.stderr
            assert attacker.kernel.directory.name in seen.stdout  # its own: the probe works
            assert victim.kernel.directory.name not in seen.stdout
            assert (await attacker.step("1 + 1")).return_value == "2"
        assert (await victim.step("open('notes.txt').read()")).return_value == "'mine'"


# -- memory ----------------------------------------------------------------------------------


async def test_a_memory_hog_is_killed_by_the_episode_cgroup(env):
    contained_only(env)
    if memory_cgroup_parent() is None:
        pytest.skip("no writable memory cgroup here")
    obs = await run(
        env,
        "chunks = []\nwhile True:\n    chunks.append(b'\\1' * (32 * 2**20))",
        timeout_s=60,
    )
    assert obs.status is StepStatus.KERNEL_DIED, obs
    assert obs.metadata.get("out_of_memory") is True
    assert "out of memory" in obs.error.evalue
    assert (await run(env, "1 + 1")).return_value == "2"  # the episode goes on, fresh kernel


async def test_a_live_fork_shares_the_budget_and_has_a_memory_limit_of_its_own(env):
    contained_only(env)
    parent = env[0]
    await run(env, "x = 41")
    (child,) = await parent.fork(1)
    try:
        cgroup = child.kernel.manager.provisioner.cgroup
        if memory_cgroup_parent() is not None:
            assert cgroup is not None and cgroup.memory_path is not None
            assert child.kernel.pid in cgroup.pids()
        assert child.kernel.work_dir.is_relative_to(parent.kernel.fs.root)
        obs = await child.step(FILL + "print(*fill('child.bin'))\nx + 1", timeout_s=STEP_S)
        assert obs.status is StepStatus.OK, obs.stderr
        assert obs.stdout.split()[1] == "ENOSPC" and obs.return_value == "42"
        assert parent.kernel.fs.used_bytes() <= BUDGET_MB * 2**20
        if memory_cgroup_parent() is not None:
            obs = await child.step(
                "chunks = []\nwhile True:\n    chunks.append(b'\\1' * (32 * 2**20))", timeout_s=60
            )
            assert obs.status is StepStatus.KERNEL_DIED and obs.metadata["out_of_memory"]
    finally:
        await child.close()
    for _ in range(100):  # the child's cgroups go with it
        if not any(p.exists() for p in (cgroup.paths if cgroup else [])):
            break
        await anyio.sleep(0.1)
    assert not any(p.exists() for p in (cgroup.paths if cgroup else []))
    assert (await run(env, "x")).return_value == "41"  # the parent survived its child
