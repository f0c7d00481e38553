"""Throwaway steps: code run in a fork of the episode's kernel shows what a normal step would,
and leaves the episode (variables, files, step count, history) as it was."""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest

from kernelenv import KernelEnv, KernelPool
from kernelenv.errors import InvalidActionError
from kernelenv.models import CodeAction, StepStatus
from kernelenv.sandbox.config import SandboxConfig

from levels import LEVELS

pytestmark = pytest.mark.anyio


STATE = (
    "import json\n"
    "value = 7\n"
    "items = [1, 2, 3]\n"
    "def helper(): return 'helped'\n"
    "open('notes.txt', 'w').write('kept')\n"
)

# Cells whose outputs do not depend on state a normal step would change first.
SAME_AS_A_NORMAL_STEP = [
    "print('out'); value * 6",
    "import sys; print('to stderr', file=sys.stderr, flush=True)",
    "from IPython.display import display, HTML, Markdown\n"
    "display(HTML('<b>bold</b>')); display(Markdown('*md*'), display_id='d1')",
    "import base64\nfrom IPython.display import Image\n"
    "Image(data=base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=='))",
    "def f(n):\n    return 1 / n\nf(0)",
    "raise ValueError('bad value')",
    "this is not python",
    "%%capture captured\nprint('hidden')",
    "x = %who_ls function\nx",
    "helper()",
    "from IPython.display import clear_output\nprint('gone'); clear_output(); print('stays')",
]


@pytest.fixture(params=LEVELS)
async def env(request, anyio_backend):
    config = SandboxConfig(level=request.param, max_processes=64)
    async with KernelPool(size=0, sandbox=config) as pool:
        async with KernelEnv(pool=pool, step_timeout_s=3, interrupt_grace_s=0.5) as env:
            await env.reset()
            assert (await env.step(STATE)).status is StepStatus.OK
            env.level = request.param  # type: ignore[attr-defined]
            yield env


async def assert_untouched(env: KernelEnv, steps: int) -> None:
    """The episode's variables, files and step count are as STATE left them."""
    assert env.state.step_count == steps
    assert len(env.episode.steps) == steps
    seen = await env.step(
        "(value, items, helper(), open('notes.txt').read(), sorted(__import__('os').listdir()))"
    )
    assert seen.status is StepStatus.OK, seen.stderr
    assert seen.return_value == "(7, [1, 2, 3], 'helped', 'kept', ['notes.txt'])"


def comparable(observation) -> dict:
    error = observation.error
    return {
        "status": observation.status,
        "stdout": observation.stdout,
        "stderr": observation.stderr,
        "return_value": observation.return_value,
        "outputs": observation.outputs,
        "error": (error.ename, error.evalue, error.traceback) if error else None,
        "execution_count": observation.execution_count,
    }


async def test_a_throwaway_step_changes_nothing_of_the_episode(env, no_leaks):
    seen = await env.step(
        "value = 100; items.append(4); del helper\n"
        "open('notes.txt', 'w').write('overwritten'); open('new.txt', 'w').write('new')\n"
        "(value, items, sorted(__import__('os').listdir()))",
        keep=False,
    )
    assert seen.status is StepStatus.OK, seen.stderr
    assert seen.return_value == "(100, [1, 2, 3, 4], ['new.txt', 'notes.txt'])"
    assert seen.metadata["throwaway"] is True
    # The action's own field does the same (the wire's spelling).
    other = await env.step(CodeAction(code="value = 0; value", keep=False))
    assert other.return_value == "0"
    await assert_untouched(env, steps=1)


async def test_a_throwaway_shows_what_a_normal_step_shows(env, no_leaks):
    for code in SAME_AS_A_NORMAL_STEP:
        throwaway = await env.step(code, keep=False)
        normal = await env.step(code)
        assert comparable(throwaway) == comparable(normal), code


async def test_hostile_throwaways_leave_the_episode_serving(env, no_leaks):
    loop = await env.step("while True: pass", keep=False)
    assert loop.status is StepStatus.TIMEOUT
    stubborn = await env.step(
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('before')\n"
        "time.sleep(60)",
        keep=False,
    )
    assert stubborn.status is StepStatus.TIMEOUT
    assert "throwaway fork was killed" in stubborn.error.evalue
    died = await env.step("import os; os._exit(3)", keep=False)
    assert died.status is StepStatus.KERNEL_DIED
    assert "exit code 3" in died.error.evalue and not died.kernel_restarted
    # 100 MB through the pipe and the cap: seconds on a loaded machine, not the 3 s budget.
    flood = await env.step("print('x' * 100_000_000)", keep=False, timeout_s=30)
    assert flood.status is StepStatus.OK and flood.output_truncated
    assert len(flood.stdout) < 2 * env.max_output_bytes
    tamper = await env.step(
        "import builtins, sys, os\n"
        "globals().clear()\n"
        "builtins.print = None; builtins.len = lambda x: 0\n"
        "sys.modules.clear()\n"
        "for fd in range(3, 256):\n"
        "    try: os.write(fd, b'garbage')\n"
        "    except OSError: pass\n",
        keep=False,
    )
    assert tamper.status in (StepStatus.OK, StepStatus.ERROR)
    if env.level != "none":  # a process cap: the pids cgroup, or the watchdog
        bomb = await env.step(
            "import subprocess\nprocs = []\n"
            "try:\n"
            "    for _ in range(200):\n"
            "        procs.append(subprocess.Popen(['sleep', '30']))\n"
            "except OSError as exc:\n"
            "    print('capped', type(exc).__name__)\n"
            "len(procs)",
            keep=False,
        )
        assert "capped" in bomb.stdout, bomb.stderr
    # A throwaway's processes are gone with it: the episode can still be forked.
    assert (await env.step("1 + 1", keep=False)).return_value == "2"
    await assert_untouched(env, steps=1)


async def test_a_throwaway_refuses_with_a_reason_when_a_fork_is_not_faithful(env, no_leaks):
    await env.step("import threading, time\nstop = threading.Event()\n"
                   "threading.Thread(target=stop.wait, name='worker', daemon=True).start()")
    refused = await env.step("value", keep=False)
    assert refused.status is StepStatus.ABORTED
    assert "worker" in refused.error.evalue
    await env.step("stop.set(); time.sleep(0.2)")
    assert (await env.step("value", keep=False)).return_value == "7"


# Hidden (silent) cells, as graders run them: plain Python is compiled once by the kernel and
# run directly; magics, shell syntax and top-level await go through IPython's run_cell. Both
# must behave as a silent execute does.
HIDDEN = [
    "a = 1\nimport asyncio\n",
    "await asyncio.sleep(0)\nb = a + 1",
    "names = %who_ls\nb * 100",
    "from __future__ import annotations\ndef f(x: NotDefinedAnywhere) -> int:\n    return 3\nd = f(0)",
    "def g():\n    raise ValueError('hidden failure')\ng()",
    "never = 'reached'",
]


async def test_hidden_cells_run_as_a_silent_execute_does(env, no_leaks):
    import re

    from kernelenv.runtime.throwaway_host import ForkCell, run_batch_in_forks

    cells = [ForkCell(code, 5, silent=True, stop_on=("error",)) for code in HIDDEN]
    read = "[a, b, sorted(set(names) & {'a', 'b'}), d, 'never' in globals()]"
    runs = await run_batch_in_forks(
        env.kernel, [(cells, read)] * 3, max_output_bytes=env.max_output_bytes, grace_s=0.5
    )
    first = runs[0]
    assert [first.ends[i].status for i in range(5)] == ["ok"] * 4 + ["error"]
    assert 5 not in first.started  # stopped at the error
    error = first.ends[4].error
    assert (error.ename, error.evalue) == ("ValueError", "hidden failure")
    # IPython's traceback, with the failing line of the hidden cell's source.
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error.traceback))
    assert "raise ValueError('hidden failure')" in traceback, traceback
    assert first.read is None  # a stopped run reads nothing
    assert first.outputs == []  # silent: nothing shown, not even b * 100
    for later in runs[1:]:  # from the kernel's compiled copies: the same
        assert later.ends == first.ends and later.read == first.read
    done = await run_batch_in_forks(
        env.kernel, [(cells[:4], read)], max_output_bytes=env.max_output_bytes, grace_s=0.5
    )
    assert done[0].read == "[1, 2, [\"a\", \"b\"], 3, false]"
    await assert_untouched(env, steps=1)


# An attempt that leaves processes behind: one in a new session, one double-forked, both
# touching a marker file as long as they live.
LEAVE_DAEMONS = """
import os, subprocess, sys, tempfile
marker = os.path.join(tempfile.gettempdir(), 'still-alive-MARK')
loop = f"import os, time\\nwhile True:\\n    open({marker!r}, 'w').close(); time.sleep(0.05)"
subprocess.Popen([sys.executable, '-c', loop], start_new_session=True)
if os.fork() == 0:
    if os.fork() == 0:
        os.setsid(); os.execv(sys.executable, [sys.executable, '-c', loop])
    os._exit(0)
"""
CHECK_DAEMONS = """
import os, tempfile, time
marker = os.path.join(tempfile.gettempdir(), 'still-alive-MARK')
time.sleep(0.3)
if os.path.exists(marker):
    os.remove(marker)
time.sleep(0.5)
print('alive' if os.path.exists(marker) else 'gone')
"""


async def test_a_warm_kernels_attempts_never_meet_what_an_earlier_one_left(env, no_leaks):
    """Grading runs attempts one after another in forks of one warm kernel (grading=True): a
    process an attempt leaves behind must be gone before the next attempt starts, within a
    request and across requests, or it could reach that attempt (its files, its process)."""
    from kernelenv.runtime.throwaway_host import ForkCell, run_batch_in_forks

    mark = uuid.uuid4().hex  # level none shares the host's temporary directory

    def cells(code: str) -> list:
        return [ForkCell(code.replace("MARK", mark), 10, capture=True)]

    async def batch(*codes: str) -> list:
        return await run_batch_in_forks(
            env.kernel, [(cells(code), None) for code in codes],
            max_output_bytes=env.max_output_bytes, grace_s=0.5, grading=True,
        )  # fmt: skip

    def printed(run) -> str:
        return "".join(o["content"].get("text", "") for o in run.outputs)

    # The probe sees a daemon it left itself (the probe works)...
    (probe,) = await batch(LEAVE_DAEMONS + CHECK_DAEMONS)
    assert printed(probe) == "alive\n", probe
    # ...and never one an earlier attempt left, in the same request or the next.
    left, checked = await batch(LEAVE_DAEMONS, CHECK_DAEMONS)
    assert left.ends[0].status == "ok", left
    assert printed(checked) == "gone\n"
    (checked,) = await batch(CHECK_DAEMONS)
    assert printed(checked) == "gone\n"
    # The child each request forks ahead (the spare) is used: results as without it.
    plain = await run_batch_in_forks(
        env.kernel, [(cells("value * 6"), None)], max_output_bytes=env.max_output_bytes,
        grace_s=0.5,
    )  # fmt: skip
    for spared in (await batch("value * 6", "value * 6")) + (await batch("value * 6")):
        assert spared.outputs == plain[0].outputs and spared.ends == plain[0].ends


# An attempt that writes, by absolute path, into its warm kernel's own working directory
# (each attempt works in a copy of it: later attempts would import the module left there)
# and into the episode's temporary directory.
PLANT = """
import os, tempfile
for folder in ({work_dir!r}, tempfile.gettempdir()):
    open(os.path.join(folder, 'planted_{mark}.py'), 'w').write('planted = True')
"""
FIND = """
import os, tempfile
print([os.path.exists(os.path.join(folder, 'planted_{mark}.py'))
       for folder in ({work_dir!r}, tempfile.gettempdir())])
try:
    import planted_{mark}
    print('imported')
except ImportError:
    print('not importable')
"""


async def test_a_warm_kernels_attempts_never_find_files_an_earlier_one_left(env, no_leaks):
    from kernelenv.runtime.throwaway_host import ForkCell, run_batch_in_forks

    values = {"work_dir": str(env.kernel.work_dir), "mark": uuid.uuid4().hex}

    async def batch(*codes: str) -> list[str]:
        runs = await run_batch_in_forks(
            env.kernel, [([ForkCell(code.format(**values), 10, capture=True)], None)
                         for code in codes],
            max_output_bytes=env.max_output_bytes, grace_s=0.5, grading=True,
            work_dir=env.kernel.work_dir,
        )  # fmt: skip
        return ["".join(o["content"].get("text", "") for o in run.outputs) for run in runs]

    (seen,) = await batch(PLANT + FIND)  # the probe finds what it planted itself
    assert seen == "[True, True]\nnot importable\n"  # (its copy was made before)
    # Not what an earlier attempt planted (level none shares the host's /tmp: left alone).
    tmp_kept = env.level == "none"
    _, seen = await batch(PLANT, FIND)
    assert seen == f"[False, {tmp_kept}]\nnot importable\n"
    (seen,) = await batch(FIND)
    assert seen == f"[False, {tmp_kept}]\nnot importable\n"
    if tmp_kept:
        os.remove(os.path.join(tempfile.gettempdir(), f"planted_{values['mark']}.py"))


async def test_a_throwaway_always_sees_the_state_of_its_moment(env, no_leaks):
    """The second throwaway in a row runs in the child forked ahead after the first; a cell
    run in between (a step, or a silent execute as the env's own code sends) makes it out of
    date, and a live fork must not inherit it."""
    for value in range(3):
        await env.step(f"value = {value}")
        for _ in range(3):
            assert (await env.step("value", keep=False)).return_value == str(value)
    await env.kernel.execute("value = 99", timeout_s=10, silent=True)
    assert (await env.step("value", keep=False)).return_value == "99"
    (child,) = await env.fork(1)
    async with child:
        assert (await child.step("value")).return_value == "99"
        assert (await child.step("value + 1", keep=False)).return_value == "100"
    assert (await env.step("value", keep=False)).return_value == "99"


async def test_a_throwaway_cannot_stream(env, no_leaks):
    with pytest.raises(InvalidActionError):
        await env.step("1", keep=False, on_output=lambda event: None)


def test_the_blocking_facade_takes_keep(no_leaks):
    with KernelEnv(pool_size=0, sandbox="none").sync() as env:
        env.reset()
        env.step("n = 1")
        assert env.step("n = 2; n", keep=False).return_value == "2"
        assert env.step("n").return_value == "1"
        assert env.state.step_count == 2
