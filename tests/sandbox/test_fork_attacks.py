"""Live fork against an agent that races it: links swapped in while the working directory is copied.

The attack as a red team ran it on the host-side copy: a daemon of the agent's (in a session of
its own, so the fork does not refuse) keeps swapping a folder of many files for a symbolic link
to a host folder, and plants links where the fork's own folders appear. Copied by the host, the
fork read host files into the agent's reach and wrote into host folders. Now the child copies
inside its sandbox: whatever a fork gives back, no host file is in it and no host folder changed.
"""

from __future__ import annotations

import os
import uuid

import pytest

from kernelenv import KernelEnv, KernelPool
from kernelenv.errors import ForkError
from kernelenv.models import StepStatus
from kernelenv.sandbox.config import bwrap_problem

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(bwrap_problem() is not None, reason=f"no bubblewrap: {bwrap_problem()}"),
]

FORKS = 8

SWAPPER = '''
import os, time
os.makedirs("tree/sub", exist_ok=True)
for i in range({files}):
    open(f"tree/sub/f{{i}}.txt", "w").write("x")
base = os.path.join(os.path.dirname(os.getcwd()), "f")
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        # Swap tree/sub for a link to the host's secret folder, and (once told to) plant links
        # to the host's victim folder where the forks' folders appear, as fast as it can.
        for _ in range(200_000):
            try:
                os.rename("tree/sub", "tree/real")
                os.symlink({secret!r}, "tree/sub")
                os.unlink("tree/sub")
                os.rename("tree/real", "tree/sub")
            except OSError:
                pass
            if not os.path.exists("plant"):
                continue
            try:
                for name in os.listdir(base):
                    for part in ("work", "run/connection.json", "work/tree"):
                        try:
                            os.symlink({victim!r}, os.path.join(base, name, part))
                        except OSError:
                            pass
            except OSError:
                pass
        os._exit(0)
    os._exit(0)
os.wait()
"started"
'''


async def test_links_swapped_in_during_a_fork_reach_no_host_file(tmp_path, no_leaks):
    secret_dir, victim = tmp_path / "secret", tmp_path / "victim"
    secret_dir.mkdir()
    victim.mkdir()
    secret = f"host-secret-{uuid.uuid4().hex}"
    (secret_dir / "key.txt").write_text(secret)
    async with KernelPool(size=0) as pool, KernelEnv(pool=pool) as env:
        await env.reset()
        started = await env.step(
            SWAPPER.format(files=3000, secret=str(secret_dir), victim=str(victim)), timeout_s=60
        )
        assert started.status is StepStatus.OK, started.stderr
        forked = refused = 0
        for number in range(FORKS):
            if number == FORKS // 2:  # first the copy's race alone, then links planted too
                await env.step("open('plant', 'w').close()")
            try:
                children = await env.fork(1)
            except ForkError:
                refused += 1  # a planted link made it fail: fine, it went nowhere
                continue
            forked += 1
            for child in children:
                try:
                    seen = await child.step(
                        "import os\n"
                        f"found = [os.path.join(r, n) for r, _, ns in os.walk('.', followlinks=True) "
                        f"for n in ns if {secret!r} in open(os.path.join(r, n), errors='replace').read()]\n"
                        "found"
                    )
                    assert seen.status is StepStatus.OK, seen.stderr
                    assert seen.return_value == "[]"
                finally:
                    await child.close()
        assert forked + refused == FORKS
        assert os.listdir(victim) == []
        assert (secret_dir / "key.txt").read_text() == secret and os.listdir(secret_dir) == ["key.txt"]
        # The episode still serves.
        assert (await env.step("1 + 1")).return_value == "2"


@pytest.mark.parametrize("level", ["limits", "bwrap"])
async def test_a_swapped_fork_folder_makes_the_host_remove_nothing_outside(level, tmp_path, no_leaks):
    """Found by an outside red team: the fork's run/ folder swapped for a link made the host
    remove kernel-1..5 wherever the link led (another episode's sockets) when the fork closed."""
    victim = tmp_path / "victim"
    victim.mkdir()
    names = [f"kernel-{port}" for port in range(1, 6)] + ["connection.json", "other.txt"]
    for name in names:
        (victim / name).write_text("host file")
    async with KernelPool(size=0, sandbox=level) as pool, KernelEnv(pool=pool) as env:
        await env.reset()
        [child] = await env.fork(1)
        planted = await env.step(
            "import os\n"
            "base = os.path.join(os.path.dirname(os.getcwd()), 'f')\n"
            "for name in os.listdir(base):\n"
            "    os.rename(os.path.join(base, name, 'run'), os.path.join(base, name, 'moved'))\n"
            f"    os.symlink({str(victim)!r}, os.path.join(base, name, 'run'))\n"
            "len(os.listdir(base))"
        )
        assert planted.return_value == "1", planted.stderr
        assert (await child.step("6 * 7")).return_value == "42"
        await child.close()
        assert sorted(os.listdir(victim)) == sorted(names)
        assert (await env.step("1 + 1")).return_value == "2"
    assert sorted(os.listdir(victim)) == sorted(names)
