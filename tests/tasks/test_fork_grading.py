"""Grading in throwaway forks of warm kernels gives the rows the three-kernel path gives, and an
attempt cannot reach the warm kernels or the next attempt."""

from __future__ import annotations

import os
import signal

import anyio
import pytest

from kernelenv import KernelEnv, KernelPool, SandboxConfig
from kernelenv.sandbox.config import bwrap_problem
from kernelenv.tasks.evaluation import attempt_code, evaluate
from kernelenv.tasks.fork_grading import WarmGraders, forkable
from kernelenv.tasks.library import TaskLibrary, default_library

from test_evaluation import CASES

pytestmark = pytest.mark.anyio

SETTLED = ("task_id", "library_task_id", "passed", "score", "status", "feedback")


def rows(report) -> list[dict]:
    return [{key: getattr(result, key) for key in SETTLED} for result in report.results]


async def both_ways(items, library) -> tuple[list[dict], list[dict]]:
    async with KernelPool(size=4) as pool:
        forked = await evaluate(items, library=library, workers=2, pool=pool)
        fresh = await evaluate(items, library=library, workers=2, pool=pool, forks=False)
    return rows(forked), rows(fresh)


async def test_eval_rows_match_the_three_kernel_path_on_imported_tasks(imported_library):
    items = [{"task_id": t, "completion": c} for t, c, *_ in CASES]
    forked, fresh = await both_ways(items, imported_library)
    assert forked == fresh


async def test_eval_rows_match_the_three_kernel_path_on_shipped_tasks():
    library = default_library()
    items = []
    for task in library.tasks.values():
        if task.uses_review_actions:
            continue
        items.append({"task_id": task.id, "completion": "\n\n".join(task.solution)})
        if task.wrong:
            items.append({"task_id": task.id, "completion": "\n\n".join(task.wrong)})
    assert any(forkable(library.get(item["task_id"])) for item in items)
    forked, fresh = await both_ways(items, library)
    assert forked == fresh
    assert any(row["passed"] for row in forked) and not all(row["passed"] for row in forked)


async def test_an_attempt_cannot_leave_anything_for_the_next_one(imported_library):
    library = default_library()
    task = library.get("functions_easy_palindrome")
    right = "\n\n".join(task.solution)
    poison = (
        "import builtins, os, signal\n"
        "builtins.len = lambda x: 0\n"  # its own copy of the warm kernel's memory
        "open('json.py', 'w').write('raise SystemExit')\n"  # its own copy of the folder
        "os.kill(os.getppid(), signal.SIGKILL)\n"  # the warm kernel itself: refused
    )
    async with KernelPool(size=2) as pool:
        graders = WarmGraders(pool)
        try:
            results = [await graders.grade_steps(task, [(code, 5.0)])
                       for code in (right, poison, right)]
        finally:
            await graders.aclose()
    assert [r.passed for r in results] == [True, False, True]


async def test_env_grade_keeps_its_warm_kernels_and_grades_a_seeded_episode():
    task = default_library().get("data_analysis_easy_readings")
    async with KernelPool(size=2) as pool, KernelEnv(pool=pool) as env:
        await env.reset(task_id=task.id, seed=3)
        await env.step(task.solution[0])
        first = await env.grade()
        attempt = env._graders._attempt  # the same warm kernels serve the next grades
        again = await env.grade()
        assert env._graders._attempt is attempt
        assert first.score == again.score == 1.0


async def test_a_warm_kernel_lost_mid_batch_costs_the_batch_nothing(imported_library):
    # An attempt cannot signal its warm kernel (test_an_attempt_cannot_signal_or_limit_...),
    # but a kernel can still die under a batch (the host's OOM killer, a crash): the host kills
    # it here, while the batch's first attempt sleeps.
    task = TaskLibrary(imported_library).get("humaneval_0")
    killer = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
    right = attempt_code(task, "    return a + b\n")
    sleeper = "import time\ntime.sleep(2)\n\n" + attempt_code(task, "    return a - b\n")
    async with KernelPool(size=2) as pool:
        graders = WarmGraders(pool)
        try:
            ((_, first),) = await graders.run_completions([(task, right, 5.0)])
            warm = graders._attempt

            async def kill_it() -> None:
                await anyio.sleep(1.0)
                os.kill(warm.pid, signal.SIGKILL)

            async with anyio.create_task_group() as group:
                group.start_soon(kill_it)
                batch = await graders.run_completions(
                    [(task, code, 5.0) for code in (sleeper, right, killer, right)]
                )
            replaced = graders._attempt is not warm
        finally:
            await graders.aclose()
    assert first.passed and replaced
    assert [grade.passed for _, grade in batch] == [False, True, False, True]
    assert batch[2][0].status.value == "error"  # the killer's own kill was refused
    assert "PermissionError" in batch[2][0].stderr


# Found by an outside red team: an attempt is a fork of its warm kernel (same user, same
# sandbox) and wrote into the kernel's memory, where objects sit at the addresses the attempt
# sees: `builtins.globals` swapped for `locals` made every later attempt's collect find nothing.
REWRITE_THE_WARM_KERNEL = r'''
import builtins, ctypes, os, struct
parent = os.getppid()
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]
def move(call, address, buffer):
    mine = iovec(ctypes.addressof(buffer), len(buffer))
    theirs = iovec(address, len(buffer))
    return call(parent, ctypes.byref(mine), 1, ctypes.byref(theirs), 1, 0)
needle = struct.pack("<QQ", id("globals"), id(builtins.globals))
written = 0
for line in open(f"/proc/{parent}/maps"):
    span, mode = line.split()[:2]
    if not mode.startswith("rw"):
        continue
    start, end = (int(x, 16) for x in span.split("-"))
    for at in range(start, end, 1 << 20):
        buffer = ctypes.create_string_buffer(min(1 << 20, end - at))
        got = move(libc.process_vm_readv, at, buffer)
        found = buffer.raw[:max(got, 0)].find(needle)
        if found >= 0:
            value = ctypes.create_string_buffer(struct.pack("<Q", id(builtins.locals)), 8)
            written += move(libc.process_vm_writev, at + found + 8, value) > 0
print("written", written)
def add(a, b):
    return a + b
'''


async def test_an_attempt_cannot_rewrite_its_warm_kernels_memory(imported_library):
    right = "    return a + b\n"
    items = [{"task_id": "HumanEval/0", "completion": c}
             for c in (right, REWRITE_THE_WARM_KERNEL, right, right)]  # fmt: skip
    async with KernelPool(size=2) as pool:
        report = await evaluate(items, library=imported_library, workers=1, pool=pool)
    assert [r.passed for r in report.results[2:]] == [True, True], report.results


# A daemon an attempt leaves, once the attempt has answered, stops every pid it can signal but
# its own and its parent's: the warm kernel's threads (so the kernel itself, between requests)
# and the child forked ahead for the next attempt. Only in a PID namespace of the warm kernel's
# own (bwrap): there is nothing else there to stop.
STOP_THE_NEXT_ATTEMPT = r'''
import os, signal, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(0.2)  # re-parented to the warm kernel by now
        me, warm = os.getpid(), os.getppid()
        while True:
            for pid in range(2, 400):
                if pid not in (me, warm):
                    try:
                        os.kill(pid, signal.SIGSTOP)
                    except OSError:
                        pass
            time.sleep(0.01)
    os._exit(0)
def is_palindrome(text):
    return text == text[::-1]
'''


async def test_a_process_an_attempt_leaves_cannot_stop_the_next_attempt():
    if bwrap_problem() is not None:
        pytest.skip(f"needs a pid namespace of its own (bwrap): {bwrap_problem()}")
    task = default_library().get("functions_easy_palindrome")
    right = "\n\n".join(task.solution)
    async with KernelPool(size=2, sandbox=SandboxConfig(level="bwrap")) as pool:
        graders = WarmGraders(pool)
        try:
            first = await graders.grade_steps(task, [(right, 5.0)])
            await graders.grade_steps(task, [(STOP_THE_NEXT_ATTEMPT, 5.0)])
            await anyio.sleep(0.5)  # the daemon has had its time with the waiting child
            after = await graders.grade_steps(task, [(right, 5.0)])
        finally:
            await graders.aclose()
    assert first.passed
    assert after.passed, after.feedback


# Found by an outside red team: an attempt is a fork of its warm kernel, so it holds the
# kernel's session key and knows its socket paths. It connected to the kernel's shell socket
# and queued code the warm kernel ran: here a patch of the harness that blanks every later
# completion (the same access forged grades and read other completions).
HAVE_THE_WARM_KERNEL_RUN_CODE = r'''
import time
import zmq
from ipykernel.kernelapp import IPKernelApp
from jupyter_client.session import Session
app = IPKernelApp.instance()
session = Session(key=get_ipython().kernel.session.key, signature_scheme="hmac-sha256")
shell = zmq.Context().socket(zmq.DEALER)
shell.connect(f"ipc://{app.ip}-{app.shell_port}")
patch = """
import kernelenv.runtime.throwaway as harness
run = harness._run
def blank(spec, *args):
    for cell in spec["cells"]:
        if cell.get("capture"):
            cell["code"] = "pass"
    return run(spec, *args)
harness._run = blank
"""
shell.send_multipart(session.serialize(session.msg("execute_request", {
    "code": patch, "silent": True, "store_history": False, "user_expressions": {},
    "allow_stdin": False, "stop_on_error": False})))
time.sleep(0.5)
'''


async def test_an_attempt_cannot_have_its_warm_kernel_run_code(imported_library):
    right = "    return a + b\n"
    # One worker, batches of four: the attack in the first, the second is all correct.
    items = [{"task_id": "HumanEval/0", "completion": c}
             for c in [right + HAVE_THE_WARM_KERNEL_RUN_CODE] + [right] * 7]  # fmt: skip
    async with KernelPool(size=2) as pool:
        report = await evaluate(items, library=imported_library, workers=1, pool=pool)
    assert [r.passed for r in report.results] == [True] * 8, report.results


# Found by an outside red team: what an attempt sends its warm kernel (an interrupt) or writes
# into its harness's result pipe (a line of JSON nested too deep to decode) failed the harness
# itself, and with it every attempt of the batch.
SIGNAL_THE_WARM_KERNEL = (
    "import os, signal, time\nos.kill(os.getppid(), signal.SIGINT)\ntime.sleep(0.5)\n"
)
NEST_A_HARNESS_LINE = (
    "import os, sys\n"
    "os.write(sys.stdout.pipe.fd, b'{\"x\": ' + b'[' * 5000 + b']' * 5000 + b'}\\n')\n"
)
# ...and writing the line that starts a cell again and again kept its budget from running out.
START_THE_BUDGET_AGAIN = (
    "import os, sys, time\n"
    "while True:\n"
    "    os.write(sys.stdout.pipe.fd, b'{\"start\": 0}\\n')\n"
    "    time.sleep(0.5)\n"
)


async def test_what_an_attempt_sends_its_harness_costs_that_attempt_alone(imported_library):
    right, wrong = "    return a + b\n", "    return a - b\n"
    completions = [right, wrong + SIGNAL_THE_WARM_KERNEL, wrong + NEST_A_HARNESS_LINE, right,
                   right + START_THE_BUDGET_AGAIN, right, right, right]
    items = [{"task_id": "HumanEval/0", "completion": c} for c in completions]
    async with KernelPool(size=2) as pool:
        report = await evaluate(items, library=imported_library, workers=1, pool=pool)
    passed = [r.passed for r in report.results]
    assert passed == [True, False, False, True, False, True, True, True], report.results
    assert report.results[4].status == "timeout", report.results[4]  # its 4 s budget held


# An attempt knows its parent: a SIGSTOP to the warm kernel (or to one of its threads, or to
# every process) stalled the attempts behind it until the host's budget ran out and the kernel
# was replaced; prlimit on it could leave it no descriptors.
REACH_THE_WARM_KERNEL = r'''
import ctypes, fcntl, os, platform, resource, signal, socket, struct
warm = os.getppid()
threads = [int(t) for t in os.listdir(f"/proc/{warm}/task") if int(t) != warm]
libc = ctypes.CDLL(None, use_errno=True)

def tkill(tid, sig):
    if libc.syscall({"x86_64": 200, "aarch64": 130}[platform.machine()], tid, sig) != 0:
        errno = ctypes.get_errno()
        raise (PermissionError if errno == 1 else OSError)(errno, os.strerror(errno))

attacks = {
    "stop it": lambda: os.kill(warm, signal.SIGSTOP),
    "stop it through a thread": lambda: os.kill(threads[0], signal.SIGSTOP),
    "stop a thread alone": lambda: tkill(threads[0], signal.SIGSTOP),
    "stop everyone": lambda: os.kill(-1, signal.SIGSTOP),
    "stop its group": lambda: os.killpg(os.getpgid(warm), signal.SIGSTOP),
    "starve it": lambda: resource.prlimit(warm, resource.RLIMIT_NOFILE, (4, 4)),
    "by pidfd": lambda: signal.pidfd_send_signal(os.open(f"/proc/{warm}", os.O_RDONLY),
                                                 signal.SIGSTOP),
    "renice it": lambda: os.setpriority(os.PRIO_PROCESS, warm, 19),
    # Found by a second red team: a descriptor's owner gets a signal of its owner's choosing
    # as I/O comes, and /proc files of the warm kernel change how it is treated.
    "own a pipe": lambda: fcntl.fcntl(os.pipe()[0], fcntl.F_SETOWN, warm),
    "pick its signal": lambda: fcntl.fcntl(os.pipe()[0], 10, signal.SIGSTOP),  # F_SETSIG
    "own a socket": lambda: fcntl.ioctl(socket.socketpair()[0].fileno(), 0x8901,
                                        struct.pack("i", warm)),  # FIOSETOWN
    "make it the OOM killer's choice": lambda: open(f"/proc/{warm}/oom_score_adj", "w").write(
        "1000"),
    "lower its CPU share": lambda: open(f"/proc/{warm}/autogroup", "w").write("19"),
}
reached = []
for name, attack in attacks.items():
    try:
        attack()
        reached.append(name)
    except PermissionError:
        pass
os.kill(os.getpid(), 0)  # signals to itself still work
print("reached:", reached)
'''


async def test_an_attempt_cannot_signal_or_limit_its_warm_kernel():
    task = default_library().get("functions_easy_palindrome")
    right = "\n\n".join(task.solution)
    async with KernelPool(size=2) as pool:
        graders = WarmGraders(pool)
        try:
            await graders.grade_steps(task, [(right, 5.0)])
            warm = graders._attempt
            ((seen, grade),) = await graders.run_completions(
                [(task, REACH_THE_WARM_KERNEL + "\n" + right, 5.0)]
            )
            after = await graders.grade_steps(task, [(right, 5.0)])
            kept = graders._attempt is warm  # not replaced: it never stopped answering
            stat = await anyio.Path(f"/proc/{warm.pid}/stat").read_text() if kept else ""
        finally:
            await graders.aclose()
    assert "reached: []" in seen.stdout, (seen.stdout, seen.stderr)
    assert kept and stat.split(")")[1].split()[0] not in "Tt"  # running, not stopped
    assert grade.passed and after.passed, (grade.feedback, after.feedback)


# Found by a second red team: a chain of processes, each the parent of the next and the tail
# forking on, lost one link a round to the kills of the warm kernel's direct children and
# outgrew their rounds; every later attempt then found "child processes that a fork cannot
# copy" and failed.
GROW_A_CHAIN = r'''
import os, sys, time
NODE = """
import os, sys, time
deadline = float(sys.argv[1])
while time.time() < deadline:
    try:
        pid = os.fork()
    except OSError:
        time.sleep(0.001)
        continue
    if pid == 0:
        continue  # the new tail
    time.sleep(max(0.0, deadline - time.time()))  # a link
    os._exit(0)
os._exit(0)
"""
if os.fork() == 0:
    try:
        os.setsid()
        os.execv(sys.executable, [sys.executable, "-S", "-I", "-c", NODE, str(time.time() + 30)])
    finally:
        os._exit(0)
time.sleep(1.0)
'''


async def test_a_chain_of_processes_an_attempt_leaves_is_killed_whole():
    task = default_library().get("functions_easy_palindrome")
    right = "\n\n".join(task.solution)
    async with KernelPool(size=2) as pool:
        graders = WarmGraders(pool)
        try:
            await graders.grade_steps(task, [(GROW_A_CHAIN + "\n" + right, 5.0)])
            after = [await graders.grade_steps(task, [(right, 5.0)]) for _ in range(2)]
        finally:
            await graders.aclose()
    assert all(grade.passed for grade in after), [grade.feedback for grade in after]


# Found by a third red team: the episode's byte budget is mounted at its own path, under /tmp,
# so an attempt reached its root (which no cleanup looked at) and filled its bytes and inodes
# for every later attempt.
FILL_THE_BUDGET_AT_ITS_ROOT = r'''
import glob, os
junk = os.path.join(glob.glob("/tmp/kernelenv-*/k*/fs")[0], "junk")
os.makedirs(junk, exist_ok=True)
try:
    with open(os.path.join(junk, "big"), "wb") as f:
        while True:
            f.write(b"\0" * (1 << 24))
except OSError:
    pass
try:
    for n in range(1 << 20):
        open(os.path.join(junk, str(n)), "w").close()
except OSError:
    print("full")
'''
WRITE_A_TEMP_FILE = (
    "import tempfile\nwith tempfile.TemporaryFile() as f:\n    f.write(b'x' * 100_000)\n"
)


async def test_an_attempt_cannot_fill_the_budget_for_the_next():
    if bwrap_problem() is not None:
        pytest.skip(f"the budget's root is reachable at bwrap: {bwrap_problem()}")
    task = default_library().get("functions_easy_palindrome")
    right = WRITE_A_TEMP_FILE + "\n\n".join(task.solution)
    async with KernelPool(size=2, sandbox=SandboxConfig(level="bwrap")) as pool:
        graders = WarmGraders(pool)
        try:
            ((seen, _),) = await graders.run_completions(
                [(task, FILL_THE_BUDGET_AT_ITS_ROOT, 30.0)]
            )
            after = [await graders.grade_steps(task, [(right, 5.0)]) for _ in range(2)]
        finally:
            await graders.aclose()
    assert "full" in seen.stdout, (seen.stdout, seen.stderr)  # the attack reached the root
    assert all(grade.passed for grade in after), [grade.feedback for grade in after]


# Found by an outside red team: SysV shared memory outlives the attempt that made it (the
# kernel's IPC namespace lives as long as the kernel), charged to the kernel's memory: 2 GiB
# of it had the next batch's kernel OOM-killed, and a later attempt could read it.
LEAVE_SYSV_OBJECTS = r'''
    return a + b
import ctypes
_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmget.restype = ctypes.c_int
_made = [_libc.shmget(0, 1 << 20, 0o1600), _libc.msgget(0, 0o1600), _libc.semget(0, 1, 0o1600)]
print("made", _made)
'''
COUNT_SYSV_OBJECTS = r'''
    return a + b
print("objects", sum(len(open(f"/proc/sysvipc/{_t}").readlines()) - 1
                     for _t in ("shm", "msg", "sem")))
'''


async def test_sysv_ipc_objects_an_attempt_leaves_are_removed(imported_library):
    if bwrap_problem() is not None:
        pytest.skip(f"a kernel has an IPC namespace of its own at bwrap: {bwrap_problem()}")
    task = TaskLibrary(imported_library).resolve(["HumanEval/0"])[0]
    async with KernelPool(size=2, sandbox=SandboxConfig(level="bwrap")) as pool:
        graders = WarmGraders(pool)
        try:
            seen = await graders.run_completions([
                (task, attempt_code(task, code), 4.0)
                for code in (LEAVE_SYSV_OBJECTS, COUNT_SYSV_OBJECTS, LEAVE_SYSV_OBJECTS)
            ])  # fmt: skip
            (after,) = await graders.run_completions(
                [(task, attempt_code(task, COUNT_SYSV_OBJECTS), 4.0)]
            )
        finally:
            await graders.aclose()
    made = [observation.stdout for observation, _ in seen[::2]]
    assert all("made [" in out and "-1" not in out for out in made), made  # the attack ran
    assert [seen[1][0].stdout, after[0].stdout] == ["objects 0\n"] * 2, (seen, after)
    assert all(grade.passed for _, grade in [*seen, after])


# Attempts batched in one request were forked while the warm kernel held the whole batch, so
# an attempt found its batch-mates' completions in its memory (the collector lists every
# object once unfrozen) and passed by running a correct one: in an RL group, every completion
# of a prompt sits in one batch.
COPY_A_BATCH_MATE = r'''
import gc
gc.unfreeze()
def _texts():
    for o in gc.get_objects():
        values = o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()
        for v in values:
            if isinstance(v, str) and "return a + b" in v and "_texts" not in v:
                yield v
for _text in _texts():
    if (_start := _text.find("def add")) >= 0:
        try:
            exec(_text[_start:], globals())
            break
        except Exception:
            pass
'''


# Found by a second outside red team: the warm kernel kept the request before as its "parent"
# (a context variable the next attempt's child copied), and the attempt ran the code in it.
COPY_THE_ONE_BEFORE = r'''
import ast, json
_parent = get_ipython().kernel.get_parent()
for _expression in ((_parent.get("content") or {}).get("user_expressions") or {}).values():
    for _spec in json.loads(ast.parse(_expression, mode="eval").body.args[0].value):
        for _cell in _spec["cells"]:
            if _cell.get("capture") and "_parent" not in _cell["code"]:
                exec(_cell["code"], globals())
'''


async def test_an_attempt_cannot_copy_a_batch_mates_completion(imported_library):
    right = "    return a + b\n"
    items = [{"task_id": "HumanEval/0", "completion": c}
             for c in [right, COPY_A_BATCH_MATE, right, COPY_THE_ONE_BEFORE] * 2]  # fmt: skip
    async with KernelPool(size=2) as pool:
        report = await evaluate(items, library=imported_library, workers=1, pool=pool)
    assert [r.passed for r in report.results] == [True, False] * 4, report.results


# A batch's attempts run in children forked ahead, which wait beside the attempts before them
# (see throwaway.prepare_spares): an attempt that stopped them, and their process groups, would
# have every later one time out. (Its siblings only: the test stops nothing else.)
STOP_MY_SIBLINGS = r'''
import os, signal
for _pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{_pid}/stat") as _stat:
            _parent = int(_stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        continue
    if _parent == os.getppid() and int(_pid) != os.getpid():
        for _target in (int(_pid), -int(_pid)):
            try:
                os.kill(_target, signal.SIGSTOP)
                print("stopped", _target)
            except OSError as _exc:
                print("refused", _target, _exc.errno)
'''


async def test_an_attempt_cannot_stop_the_children_waiting_for_its_batch_mates(
    imported_library,
):
    right = "    return a + b\n"
    items = [{"task_id": "HumanEval/0", "completion": c}
             for c in [STOP_MY_SIBLINGS, right, right, right]]  # fmt: skip
    async with KernelPool(size=2) as pool:
        report = await evaluate(items, library=imported_library, workers=1, pool=pool)
    assert [r.passed for r in report.results] == [False, True, True, True], report.results
    assert all(r.status != "timeout" for r in report.results), report.results


# Found by a second outside red team. An attempt made itself dumpable and had a process of its
# own seize it with ptrace: killed, it stays a zombie its warm kernel cannot reap while the
# tracer lives, and the kernel waited for it to the host's budget (55 s for a 4 s step)...
HAVE_A_TRACER_HOLD_ME = r'''
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(4, 1, 0, 0, 0)
me = os.getpid()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        libc.ptrace(0x4206, me, 0, 0)  # PTRACE_SEIZE
        time.sleep(150)
    os._exit(0)
time.sleep(0.5)
'''
# ...and one left a folder 1100 deep, full of files, in its copy of the working directory:
# its removal ran out of descriptors and left the episode's file system without inodes.
FILL_THE_DISK_OUT_OF_REACH = r'''
import os
here = os.open(".", os.O_RDONLY)
for _ in range(1100):
    os.mkdir("d", dir_fd=here)
    below = os.open("d", os.O_RDONLY, dir_fd=here)
    os.close(here)
    here = below
n = 0
try:
    while True:
        os.close(os.open(str(n), os.O_CREAT | os.O_WRONLY, dir_fd=here))
        n += 1
except OSError:
    pass
'''


async def test_what_an_attempt_leaves_cannot_stall_or_fill_its_warm_kernel(imported_library):
    right, wrong = "    return a + b\n", "    return a - b\n"
    completions = [wrong + HAVE_A_TRACER_HOLD_ME, right, wrong + FILL_THE_DISK_OUT_OF_REACH,
                   right, right]
    items = [{"task_id": "HumanEval/0", "completion": c} for c in completions]
    async with KernelPool(size=2) as pool:
        report = await evaluate(items, library=imported_library, workers=1, pool=pool)
    assert [r.passed for r in report.results] == [False, True, False, True, True], report.results
    # Graded (its step may have timed out: held by its tracer), not a lost warm kernel.
    assert report.results[0].status != "kernel_died", report.results[0]
