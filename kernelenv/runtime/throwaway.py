"""Throwaway forks, kernel side: run cells in a plain forked child of this kernel and send back
what they showed, leaving this kernel as it was.

:func:`run_batch` is called by the host as a silent execute's ``user_expressions`` (as live fork's
``fork_here``), so this kernel's history, ``_`` and execution count are untouched. It forks a
plain child, not a new kernel: no sockets, threads or event loop are built, which is what makes
a throwaway cost a fork and a cell instead of a kernel start. The child runs each cell with
IPython's own shell (``run_cell``: magics, display, tracebacks as in a notebook) and writes
what the shell would have published on IOPub to a pipe as JSON lines; this kernel reads the
pipe, enforces each cell's budget (SIGINT at the deadline, SIGKILL after a grace, to the child's
whole process group) and returns the lines it kept as one JSON text.

The child gets ready first (its own streams, signals, none of the kernel's channels), then waits
for its run on a pipe: the spec and the hidden cells this kernel compiled (:func:`_hidden_code`),
marshalled. A warm grading kernel (``spare``) forks the next child as soon as it has answered,
so that wait is where a child spends the time between requests. It kills what an attempt left
running once the attempt has answered (:func:`_kill_strays`), and before each attempt clears
what earlier ones wrote into its folders (:func:`_clear_after_attempts`).

Lines the child writes (each a JSON object):

- ``{"start": i}`` / ``{"end": i, "status": ..., "error": ..., "execution_count": n}``: cell ``i``
  began / ended (status ``ok``, ``error`` or ``timeout`` when the budget's SIGINT stopped it);
- ``{"o": {"msg_type": ..., "content": ...}}``: an output message of a captured cell;
- ``{"read": text}`` or ``{"read_error": {"ename", "evalue"}}``: the value of the ``read``
  expression after the cells, as JSON text (a grade's answer);
- ``{"dropped": true}``: captured output past the byte cap was dropped;
- ``{"done": true}``: all is sent. This kernel answers at once and kills the child, which it
  reaps before its next fork: unmapping the child's copy of a large memory takes milliseconds
  that need not be waited for.

Attempt code runs in the child and can write anything to the pipe: the host treats what
comes back as the attempt's claims (its outputs, its answer), never as a verdict.

This module runs inside kernels: it imports nothing heavier than the standard library and
IPython, and nothing at all until used.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import select
import shutil
import signal
import sys
import tempfile
import time

from .reaping import EXITING, reap_exiting

# Extra bytes kept over the output cap for lines' framing, errors, results and markers.
_SLACK_BYTES = 64 * 1024
# What the parent keeps of fd-level output (subprocesses, C code) beyond the output cap: none.
_PIPE_CHUNK = 1 << 16

# The JSON encoder as it was when this module was imported (before any attempt code ran in
# this kernel's children): attempt code patching ``json.dumps`` cannot change how the harness
# encodes.
_dumps = json.dumps


def run_batch(specs_json: str, grading: bool = False, ahead_only: bool = False) -> _Raw:
    """Run each spec of ``specs_json`` (a JSON list) in a throwaway fork of its own, one after
    the other; return ``{"batch": [report, ...]}`` as JSON text. One request for many attempts:
    the host's round trip is paid once.

    A spec: ``cells`` (each ``code``, ``timeout_s``, ``silent``, ``capture`` and ``stop_on``:
    statuses after which no further cell runs), ``read`` (an expression whose value is sent
    back as JSON, or null), ``max_output_bytes``, ``grace_s`` (how long an interrupted cell may
    take to stop) and ``work_dir`` (the episode's folder: the child works in a copy of it, so
    files it writes there vanish with it). ASCII JSON: no character the pretty printer would
    split lines at.

    Once it has answered, this kernel forks the next child ahead (the *spare*), which takes the
    fork off the next throwaway's time: best-of-n on one state, or a grading kernel's next
    attempt. The spare holds the state of the moment it was forked, so it runs the next
    throwaway only if nothing else ran in this kernel since (:func:`_spare_is_current`); any
    other cell discards it as it starts.

    ``grading``: this is a warm grading kernel, which runs nothing but throwaways: it kills
    what each attempt left running once it has answered, clears before each attempt what
    earlier ones wrote into its folders (:func:`_clear_after_attempts`), ignores interrupts
    while it grades, and drops the request's content once answered (:func:`_forget_request`);
    each attempt's process refuses itself ``connect()`` and any signal or limit aimed at this
    kernel (:mod:`.attempt_filter`).

    ``ahead_only``: the batch holds attempts' code, so each of several runs only in a child
    forked before this request (:func:`prepare_spares`); one without is refused with
    ``again``, for the host to send alone.
    """
    _watch_cells()
    if grading:
        _guard_grading_kernel()
    # An attempt can signal its warm kernel: an interrupt must not end the batch (the host
    # never interrupts a grading kernel; it replaces one that stops answering).
    sigint = signal.signal(signal.SIGINT, signal.SIG_IGN) if grading else None
    try:
        reports = []
        specs = json.loads(specs_json)
        several = ahead_only and len(specs) > 1
        for spec in specs:
            spare = _take_spare()
            if several and spare is None:
                # Forked now, a child would hold its batch-mates' code (this request): the
                # host sends it again alone.
                reports.append({"refused": "no child was forked ahead for it", "again": True})
                continue
            try:
                reports.append(_run(spec, grading, spare, fresh=not several))
            except Exception as exc:  # noqa: BLE001 - what one run sent broke the harness
                why = f"the harness failed on what this run sent ({exc!r:.200})"
                reports.append({"refused": why})
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
    if grading:
        _forget_request()
        if _UNREMOVED:  # the next attempt would meet it: the host replaces this kernel
            raise RuntimeError(f"could not remove what an attempt left: {_UNREMOVED[0]}")
        if _UNKILLED:
            raise RuntimeError("could not kill every process an attempt left")
    report = _Raw(_dumps({"batch": reports}))
    _fork_spare_soon()
    return report


# The most children a warm grading kernel forks ahead for one batch.
MAX_SPARES = 8


def prepare_spares(count: int) -> _Raw:
    """Fork children ahead (up to ``count``, at most :data:`MAX_SPARES` waiting) for the next
    batch of a warm grading kernel, in a request of their own: a child forked while this kernel
    holds a batch holds every attempt of it, and an attempt ran its batch-mate's completion
    (see :func:`run_batch`). Returns how many wait."""
    _watch_cells()
    _guard_grading_kernel()
    _warm_once()
    _kill_strays()  # none should be left; a spare must not wait beside one
    while len(_SPARE) < min(count, MAX_SPARES):
        child = _Child.fork()
        if isinstance(child, str):
            break
        _SPARE.append(child)
    return _Raw(str(len(_SPARE)))


def _forget_request() -> None:
    """Drop the content of the request being answered, which holds the attempt's code: the
    kernel keeps the message as its "parent" (ipykernel's context variable, which the spare,
    forked after the answer, copies), and an attempt read the one before it there and ran it
    as its own."""
    from IPython import get_ipython

    kernel = getattr(get_ipython(), "kernel", None)
    try:
        content = kernel.get_parent().get("content")
    except Exception:  # noqa: BLE001 - no kernel here (a test), or an ipykernel without it
        return
    if isinstance(content, dict):
        content["user_expressions"] = {}
        content["code"] = ""


def _run(
    spec: dict, grading: bool = False, spare: _Child | None = None, fresh: bool = True
) -> dict:
    """One parsed spec of :func:`run_batch` (in ``spare`` if there is one); returns its report.
    ``fresh``: a child may be forked now if the spare cannot run it (not in a grading batch of
    several, whose request a child forked now would hold: then the host sends it again)."""
    own_ipc = spec.get("own_ipc") is True
    if grading:
        if _clear_after_attempts(spare, spec.get("work_dir"), own_ipc) and spare is not None:
            # It (and any other spare) waited beside a process an attempt left running, which
            # could have stopped or signalled it: a fresh child runs this attempt.
            spare.discard()
            spare = None
            discard_spare()
    else:
        reap_exiting()
    _warm_once()
    cells = spec["cells"]
    compiled = [_hidden_code(cell["code"]) if cell.get("silent") else None for cell in cells]
    max_output = int(spec["max_output_bytes"])
    copy_dir = _copy_target(spec.get("work_dir"))
    # The spares waiting beside it (a batch's next attempts): not to be signalled either.
    siblings = [pid for other in _SPARE for pid in (other.pid, -other.pid)]
    payload = marshal.dumps(({**spec, "grading": grading, "siblings": siblings}, compiled,
                             copy_dir))  # fmt: skip
    child = spare
    if child is not None and not child.hand_over(payload):  # the spare died waiting
        child.discard()
        child = None
    if child is None and not fresh:
        if copy_dir is not None:
            _remove_tree(copy_dir[0])
        return {"refused": "its child forked ahead was gone", "again": True}
    if child is None:
        forked = _Child.fork()
        if isinstance(forked, str):
            problem = forked
        elif not forked.hand_over(payload):
            forked.discard()
            problem = "the throwaway child died before it started"
        else:
            child = forked
    if child is None:
        if copy_dir is not None:
            _remove_tree(copy_dir[0])
        return {"refused": problem}
    try:
        report = _supervise(child.pid, child.result_r, child.out_r, child.err_r, cells,
                            max_output, float(spec["grace_s"]))  # fmt: skip
    except BaseException:  # an interrupt of this kernel: the child goes too, reaped later
        EXITING.append(child.pid)
        raise
    finally:
        child.close()
        _kill_group(child.pid)
        if copy_dir is not None:
            _remove_tree(copy_dir[0])
    # Nothing an attempt started outlives its answer: a process it left would wait beside the
    # next attempt's child (forked ahead) and could stop it, or this kernel, between requests.
    # Killed before the next one as well. What it wrote goes too, and a budget it leaves full
    # has this kernel replaced (see run_batch). Spares that waited beside it go.
    if grading and _clear_after_attempts(None, spec.get("work_dir"), own_ipc):
        discard_spare()
    return report


class _Child:
    """A throwaway child forked and made ready (its streams, signals and copies of this
    kernel's channels dealt with), waiting for the run it is handed (:meth:`hand_over`)."""

    def __init__(self, pid: int, start_w: int, result_r: int, out_r: int, err_r: int) -> None:
        self.pid = pid
        self.owner = os.getpid()
        self.cells_run = _CELLS_RUN[0]  # this kernel's cells until it was forked
        self.start_w: int | None = start_w
        self.result_r, self.out_r, self.err_r = result_r, out_r, err_r

    @classmethod
    def fork(cls) -> _Child | str:
        """A new child, or why this kernel cannot fork one faithfully now."""
        from .livefork import fork_problem

        problem = fork_problem()
        if problem is not None:
            return problem
        warm = (os.getpid(), os.getpgrp(), _thread_ids())  # what an attempt may not signal
        start_r, start_w = os.pipe()
        result_r, result_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # No flush of this kernel's streams first: the child never writes through them (it
        # gets streams of its own), and each flush is a round trip to the kernel's IOPub thread.
        try:
            pid = os.fork()
        except OSError as exc:  # a process limit reached
            for fd in (start_r, start_w, result_r, result_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            return f"this kernel cannot fork now: {exc.strerror}"
        if pid == 0:  # -- the child: never returns --
            code = 1
            try:
                for fd in (start_w, result_r, out_r, err_r):
                    os.close(fd)
                code = _child(start_r, result_w, out_w, err_w, warm)
            except BaseException:  # noqa: BLE001 - the parent reports the exit code
                pass
            os._exit(code)
        for fd in (start_r, result_w, out_w, err_w):
            os.close(fd)
        try:
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        except OSError:
            pass
        return cls(pid, start_w, result_r, out_r, err_r)

    def hand_over(self, payload: bytes) -> bool:
        """Send the child its run (then it starts); False if it is gone."""
        data = memoryview(len(payload).to_bytes(8, "little") + payload)
        try:
            while data:
                data = data[os.write(self.start_w, data):]
        except OSError:
            return False
        finally:
            os.close(self.start_w)
            self.start_w = None
        return True

    def close(self) -> None:
        for fd in (self.start_w, self.result_r, self.out_r, self.err_r):
            if fd is not None:
                os.close(fd)
        self.start_w = self.result_r = self.out_r = self.err_r = None

    def discard(self) -> None:
        """Kill it unused (reaped later)."""
        self.close()
        _kill_group(self.pid)
        EXITING.append(self.pid)


def _guard_grading_kernel() -> None:
    """Keep a warm grading kernel out of its attempts' reach (once; only grading kernels,
    which run no code of an agent's own and start no process that must live on):

    - non-dumpable: an attempt is a fork of this kernel, same user, same sandbox, and could
      read and write this kernel's memory (``process_vm_writev``: objects sit at the same
      addresses in both), changing what every later attempt runs; its forks inherit the flag,
      so attempts cannot reach one another either;
    - the reaper of its descendants' orphans: a process an attempt left running (``setsid``,
      a double fork) is re-parented here instead of to init, where
      :func:`_clear_after_attempts` finds it.
    """
    if not _GUARDED:
        import ctypes

        # Loaded here, once: each attempt's child uses them.
        from . import attempt_filter  # noqa: F401
        from .template import landlock  # noqa: F401

        libc = ctypes.CDLL(None, use_errno=True)
        for option, value in ((4, 0), (36, 1)):  # PR_SET_DUMPABLE 0, PR_SET_CHILD_SUBREAPER 1
            if libc.prctl(option, value, 0, 0, 0) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")
        _GUARDED.append(True)


_GUARDED: list[bool] = []


def _clear_after_attempts(
    keep: _Child | None, work_dir: str | None, own_ipc: bool = False
) -> bool:
    """Before an attempt in a warm grading kernel (and once each has answered): what earlier
    attempts left is gone, so none can reach this one. Their processes are killed
    (:func:`_kill_strays`); the files they wrote by absolute path into this kernel's own
    folders are removed: its working directory (which each attempt works in a copy of: a
    module left there would be imported by later attempts) and what was not there at first in
    its episode's folders (:func:`_scratch_folders`), and, ``own_ipc`` (the kernel has an IPC
    namespace of its own: bwrap), the SysV IPC objects they made (:func:`_remove_ipc_objects`).
    Returns whether a process was left."""
    strays = _kill_strays(keep)
    _remove_what_attempts_wrote(work_dir)
    if own_ipc:
        _remove_ipc_objects()
    return strays


# The SysV IPC objects (by table: shm, msg, sem) of this kernel's IPC namespace when first seen.
_IPC_SEEN: dict[str, set[int]] = {}


def _remove_ipc_objects() -> None:
    """Remove the SysV shared memory segments, message queues and semaphore sets that were not
    there at first: they outlive the attempt that made them, charged to this kernel's memory
    (an outside red team left 2 GiB of segments, and the next batch had the kernel OOM-killed),
    and a later attempt could read them. Only in an IPC namespace of the kernel's own."""
    import ctypes

    libc = None
    for table in ("shm", "msg", "sem"):
        try:
            with open(f"/proc/sysvipc/{table}") as listing:
                ids = {int(row.split()[1]) for row in listing.readlines()[1:] if row.strip()}
        except (OSError, ValueError, IndexError):
            continue
        for ident in ids - _IPC_SEEN.setdefault(table, ids):
            libc = libc or ctypes.CDLL(None, use_errno=True)
            if table == "sem":
                libc.semctl(ident, 0, 0)  # IPC_RMID
            else:
                getattr(libc, f"{table}ctl")(ident, 0, None)  # IPC_RMID


def _remove_what_attempts_wrote(work_dir: str | None) -> None:
    """Remove what was not there at first in this kernel's folders (see
    :func:`_scratch_folders`); if the episode's byte budget is not back near where it was
    (bytes or inodes), note it: the host replaces this kernel."""
    for folder, baseline in _scratch_folders(work_dir).items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name in baseline:
                continue
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    if work_dir and _SPACE:
        try:
            now = os.statvfs(work_dir)
        except OSError:
            return
        if now.f_bavail < 0.9 * _SPACE[0] or now.f_favail < 0.9 * _SPACE[1]:
            _UNREMOVED.append("the space an attempt used in the episode's byte budget")


# A grading kernel's own folders, each with the names it held when first seen, and the free
# bytes and inodes of its episode's byte budget then.
_SCRATCH: dict[str, set[str]] = {}
_SPACE: list[int] = []


def _scratch_folders(work_dir: str | None) -> dict[str, set[str]]:
    """This kernel's working directory (kept empty), and where it has them (a sandboxed
    kernel: ``<episode>/fs/{work,tmp,shm,r}``; never a shared /tmp) its episode's tmp, shm and
    socket folders and the budget's root itself, each with what it held first: an attempt
    reaches the root by its path, under /tmp, and filled the budget there for every later
    attempt (found by an outside red team)."""
    if not work_dir:
        return {}
    if not _SCRATCH:
        _SCRATCH[work_dir] = set()
        root = os.path.dirname(work_dir)
        if os.path.basename(work_dir) == "work" and os.path.basename(root) == "fs":
            for folder in (*(os.path.join(root, n) for n in ("tmp", "shm", "r")), root):
                with contextlib.suppress(OSError):
                    _SCRATCH[folder] = set(os.listdir(folder))
            with contextlib.suppress(OSError):
                space = os.statvfs(root)
                _SPACE[:] = [space.f_bavail, space.f_favail]
    return _SCRATCH


def _kill_strays(keep: _Child | None = None) -> bool:
    """Every process an earlier attempt left behind is killed, so none can reach the next
    attempt (kill it, write to its files, signal it); returns whether there was one.

    Each round kills every child there is (the attempts that answered and are exiting too)
    and then waits for them: a dead child's orphans become this kernel's children (see
    :func:`_guard_grading_kernel`) for the next round; a fork bomb runs out of rounds before
    it runs out of its process limit. Nothing is waited for before its round's kills: an
    attempt's exited process cannot be reaped while a process of its own traces it (it made
    itself dumpable and was seized), and waiting first stalled the kernel to the host's budget.
    """
    kept = {spare.pid for spare in _SPARE} | ({keep.pid} if keep is not None else set())
    found = False
    for _ in range(64):
        children = [pid for pid in _children() if pid not in kept]
        if not children:
            break
        found = found or any(pid not in EXITING for pid in children)
        # Their whole trees, stopped first: a chain of processes, each the parent of the next,
        # lost one link a round to kills of direct children and outgrew the rounds.
        tree = _stop_trees(children)
        try:
            for pidfd in tree.values():
                _pidfd_signal(pidfd, signal.SIGKILL)
        finally:
            for pidfd in tree.values():
                os.close(pidfd)
        for pid in children:  # the roots too, where a pidfd could not be had
            _signal(pid, signal.SIGKILL)
        _wait_dead(children)
    else:  # still some after every round: the host replaces this kernel
        if any(pid not in kept for pid in _children()):
            _UNKILLED.append(True)
    reap_exiting()
    return found


def _stop_trees(roots: list[int], rounds: int = 64) -> dict[int, int]:
    """SIGSTOP ``roots`` (this kernel's children) and every descendant, until a look finds no
    process not stopped yet (a stopped process forks no more); returns a pidfd of each.

    A descendant is signalled through a pidfd opened while its parent is known to be in the
    tree: a pid read from /proc may have been given to another process since (no PID
    namespace at levels limits and none).
    """
    stopped: dict[int, int] = {}
    try:
        for _ in range(rounds):
            new = [(pid, parent) for pid, parent in _tree(roots) if pid not in stopped]
            if not new:
                break
            for pid, parent in new:
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError:
                    continue  # gone
                if parent is not None and _parent_of(pid) != parent:
                    os.close(pidfd)  # not the process the listing named
                    continue
                stopped[pid] = pidfd
                _pidfd_signal(pidfd, signal.SIGSTOP)
    except BaseException:
        for pidfd in stopped.values():
            os.close(pidfd)
        raise
    return stopped


def _tree(roots: list[int]) -> list[tuple[int, int | None]]:
    """``roots`` and their descendants from /proc's ``children`` lists, each with its parent
    (None for a root)."""
    found: list[tuple[int, int | None]] = []
    todo: list[tuple[int, int | None]] = [(pid, None) for pid in roots]
    seen: set[int] = set()
    while todo and len(found) < 1 << 16:
        pid, parent = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        found.append((pid, parent))
        todo += [(child, pid) for child in _children(pid)]
    return found


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _pidfd_signal(pidfd: int, signum: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        pass


# Set when processes an attempt left could not all be killed (see _kill_strays).
_UNKILLED: list[bool] = []


def _wait_dead(pids: list[int], timeout_s: float = 1.0) -> dict[int, int]:
    """Wait until each child of ``pids`` has died, then reap those that can be (their exit
    codes): a process another traces is reaped only once its tracer is gone. An attempt had a
    process of its own seize it, and a blocking wait stalled its kernel to the host's budget."""
    fds = []
    for pid in pids:
        with contextlib.suppress(OSError):  # reaped already
            fds.append(os.pidfd_open(pid))
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)  # readable once the process has exited
        left, deadline = len(fds), time.monotonic() + timeout_s
        while left and (remaining := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(int(remaining * 1000) + 1):
                poller.unregister(fd)
                left -= 1
    finally:
        for fd in fds:
            os.close(fd)
    codes = {}
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            reaped, status = os.waitpid(pid, os.WNOHANG)
            if reaped:
                codes[pid] = os.waitstatus_to_exitcode(status)
    return codes


def _thread_ids() -> list[int]:
    """This process's thread ids (none where its /proc cannot be read: a live fork at level
    limits, never a warm kernel)."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _children(pid: int | str = "self") -> list[int]:
    """A process's children (default: this one's), from its threads' ``children`` lists in
    /proc (none found where that /proc cannot be read: a live fork at level limits, never a
    warm kernel)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as listing:
                found += [int(pid) for pid in listing.read().split()]
        except OSError:
            pass
    return found


# The child forked ahead for the next throwaway (see run_batch), and how many cells this kernel
# has started (IPython's pre_execute: silent ones too; not the throwaway requests, whose code
# is empty: their expression runs without a cell).
_SPARE: list[_Child] = []
_CELLS_RUN = [0]
_WATCHING: list[bool] = []


def _watch_cells() -> None:
    """Count this kernel's executes, and discard the spare as any cell an agent sent starts:
    it is out of date then, and the cell's writes would copy the pages the two share."""
    if _WATCHING:
        return
    _WATCHING.append(True)
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        shell.events.register("pre_execute", _count_execute)
        shell.events.register("pre_run_cell", lambda info: discard_spare())


def _count_execute() -> None:
    _CELLS_RUN[0] += 1


def _spare_is_current(spare: _Child) -> bool:
    """Whether the spare holds this kernel's state: this process forked it, and no cell has
    started here since."""
    return spare.owner == os.getpid() and _CELLS_RUN[0] == spare.cells_run


def _take_spare() -> _Child | None:
    """The oldest spare that is current (those out of date are discarded), or None."""
    while _SPARE:
        spare = _SPARE.pop(0)
        if _spare_is_current(spare):
            return spare
        if spare.owner == os.getpid():
            spare.discard()
    return None


def discard_spare() -> None:
    """Kill the spare (a live fork of this kernel must not inherit a way to it)."""
    while _SPARE:
        spare = _SPARE.pop()
        if spare.owner == os.getpid():
            spare.discard()


def _fork_spare_soon() -> None:
    """Fork the spare once this request is answered (a call of the kernel's event loop)."""
    import asyncio

    cells_run = _CELLS_RUN[0]

    def fork_spare() -> None:
        if _SPARE or _CELLS_RUN[0] != cells_run:  # another execute came first: out of date
            return
        child = _Child.fork()
        if not isinstance(child, str):
            _SPARE.append(child)

    try:
        asyncio.get_running_loop().call_soon(fork_spare)
    except RuntimeError:  # no loop running here: the next request forks its own
        pass


class _Raw:
    """A text whose repr is itself: the reply's ``text/plain`` is the JSON, not a Python
    literal of it (which would escape every backslash and quote again)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


_WARMED: list[bool] = []


def _warm_once() -> None:
    """Build, once in this kernel, what IPython makes lazily on a first result: the display
    formatters (traitlets defaults, about 8 ms). Made here, every child inherits them; made in
    a child, every child pays for them. Formatting a number shows nothing."""
    if _WARMED:
        return
    _WARMED.append(True)
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.format(0)


def exiting() -> set[int]:
    """Children a fork of this kernel may ignore: those exiting, not reaped yet (throwaway
    children killed after they answered, a live fork's intermediates), and a spare waiting for
    its run (it holds nothing)."""
    return set(EXITING) | {spare.pid for spare in _SPARE if spare.owner == os.getpid()}


def _copy_target(work_dir: str | None) -> tuple[str, str] | None:
    """Where the child works: (a fresh folder for a copy of the episode's, the cwd inside it),
    or None when the current directory is not inside the episode's folder (then the child
    works in place, and the report says files were not isolated)."""
    if not work_dir:
        return None
    try:
        cwd = os.getcwd()
        relative = os.path.relpath(cwd, work_dir)
    except (OSError, ValueError):
        return None
    if relative == ".." or relative.startswith(".." + os.sep) or os.path.isabs(relative):
        return None
    return tempfile.mkdtemp(prefix="kthrow-"), relative


# -- the parent: wait, enforce budgets, keep what comes back ---------------------------------


def _supervise(pid: int, result_r: int, out_r: int, err_r: int, cells: list[dict],
               max_output: int, grace_s: float) -> dict:  # fmt: skip
    """Read the child's pipes until it exits, interrupting (then killing) a cell over budget."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (result_r, out_r, err_r, pidfd):
        poller.register(fd, select.POLLIN)
    limit = 2 * max_output + _SLACK_BYTES + 8 * 1024 * 1024  # the answer may be up to ~4 MB
    items: list[dict] = []
    kept = 0
    pending = b""
    fd_output = {"stdout": [], "stderr": []}
    fd_bytes = 0
    # Before the first cell starts (the folder copy): the first cell's budget.
    deadline: float | None = time.monotonic() + float(cells[0]["timeout_s"]) if cells else None
    current: int | None = None
    next_cell = 0
    interrupted: set[int] = set()
    killed_in: int | None = None
    overflow = False
    open_fds = {result_r, out_r, err_r}
    exited = done = False
    try:
        while not done and (not exited or result_r in open_fds):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if current is not None and current not in interrupted:
                    interrupted.add(current)
                    _signal(pid, signal.SIGINT)
                    deadline = now + grace_s
                else:
                    killed_in = current if current is not None else -1
                    _kill_group(pid)
                    deadline = None
            if exited:  # grandchildren may hold the pipes: take what is there, then stop
                _kill_group(pid)
                wait_ms = 0
            else:
                wait_ms = None if deadline is None else max(0, int((deadline - now) * 1000) + 1)
            events = poller.poll(wait_ms)
            if not events and exited:
                break
            for fd, _ in events:
                if fd == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                    continue
                chunk = os.read(fd, _PIPE_CHUNK)
                if not chunk:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    continue
                if fd != result_r:  # fd-level output: kept while there is room
                    name = "stdout" if fd == out_r else "stderr"
                    room = max_output + 1 - fd_bytes
                    if room > 0:
                        fd_output[name].append(chunk[:room])
                    fd_bytes += len(chunk)
                    continue
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    kept += len(raw)
                    if kept > limit:
                        overflow = True
                        killed_in = current
                        _kill_group(pid)
                        break
                    try:
                        item = json.loads(raw)
                    except (ValueError, RecursionError):
                        continue  # not ours (attempt code can write to the pipe)
                    if not isinstance(item, dict):
                        continue
                    # Attempt code can write the harness's lines too: a cell starts once, in
                    # order, and ends once, so its budget cannot be started again.
                    if "start" in item:
                        if type(item["start"]) is not int or item["start"] != next_cell:
                            continue
                        current, next_cell = next_cell, next_cell + 1
                        if current >= len(cells):
                            current = None
                            continue
                        deadline = time.monotonic() + float(cells[current]["timeout_s"])
                    elif "end" in item:
                        if current is None or item["end"] != current:
                            continue
                        # Between cells, and for the read at the end, the harness runs: bounded
                        # by the last cell's budget (an answer whose encoding never ends).
                        current = None
                        deadline = time.monotonic() + float(cells[-1]["timeout_s"])
                    elif item.get("done") is True:
                        done = True
                    items.append(item)
                if overflow:
                    pending = b""
                    poller.unregister(result_r)
                    open_fds.discard(result_r)
        if done:  # what subprocesses wrote is in the pipes already: take it
            while events := [e for e in poller.poll(0) if e[0] in (out_r, err_r)]:
                for fd, _ in events:
                    chunk = os.read(fd, _PIPE_CHUNK)
                    if not chunk:
                        poller.unregister(fd)
                        continue
                    name = "stdout" if fd == out_r else "stderr"
                    room = max_output + 1 - fd_bytes
                    if room > 0:
                        fd_output[name].append(chunk[:room])
                    fd_bytes += len(chunk)
    finally:
        os.close(pidfd)
    if done:  # its exit (unmapping its copy of the memory) is not waited for: reaped later
        exit_code = 0
        EXITING.append(pid)
    else:  # ended or killed: its code, unless a tracer of its own holds it (reaped later)
        exit_code = _wait_dead([pid]).get(pid)
        if exit_code is None:
            EXITING.append(pid)
    return {
        "items": items,
        "exit_code": exit_code,
        "interrupted": sorted(interrupted),
        "killed_in": killed_in,
        "overflow": overflow,
        "fd_output": {k: b"".join(v).decode("utf-8", "replace") for k, v in fd_output.items()},
        "fd_output_dropped": fd_bytes > max_output,
    }


# What an attempt left that this kernel could not remove: it is replaced (see run_batch).
_UNREMOVED: list[str] = []


def _remove_tree(path: str) -> None:
    """Remove a folder an attempt wrote into. ``shutil.rmtree`` holds a descriptor a level and
    gave up on a tree deeper than the descriptor limit (an attempt made one 1100 deep, full
    of files, and every later attempt found the disk full): ``rm`` walks any depth."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], timeout=60,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)  # fmt: skip
    if os.path.lexists(path):
        _UNREMOVED.append(path)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _kill_group(pid: int) -> None:
    """Kill the child and what it started in its process group (a fork bomb's processes)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        _signal(pid, signal.SIGKILL)


# -- the child ---------------------------------------------------------------------------------


class _Pipe:
    """The child's end of the result pipe: JSON lines, output counted against the cap."""

    def __init__(self, fd: int, max_output: int) -> None:
        self.fd = fd
        self.max_output = max_output
        self.output_bytes = 0
        self.capturing = False
        self.dropped = False
        self.essentials: set[str] = set()

    def line(self, obj: dict) -> None:
        data = (_dumps(obj, default=_json_default, ensure_ascii=False) + "\n").encode(
            "utf-8", "surrogatepass"
        )
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def output(self, msg_type: str, content: dict) -> None:
        """An output message of the running cell, if it is captured and fits."""
        if not self.capturing:
            return
        size = _size(content)
        # A cell's first result and first error always go (cut to the cap): as the host keeps them.
        essential = msg_type in ("execute_result", "error") and msg_type not in self.essentials
        if essential:
            self.essentials.add(msg_type)
            if size > self.max_output:
                content = _cut(content, self.max_output)
        elif self.output_bytes >= self.max_output:
            self._drop()
            return
        elif msg_type == "stream":
            room = self.max_output + 1 - self.output_bytes  # one byte over: the host marks it
            text = content.get("text", "")
            if len(text) > room:
                content = {**content, "text": text[:room]}
                size = room
        elif size > self.max_output - self.output_bytes:
            self._drop()
            return
        self.output_bytes += size
        self.line({"o": {"msg_type": msg_type, "content": content}})

    def _drop(self) -> None:
        if not self.dropped:
            self.dropped = True
            self.line({"dropped": True})


class _Stream:
    """sys.stdout / sys.stderr of the child: each write is a ``stream`` output message."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, pipe: _Pipe, name: str) -> None:
        self.pipe = pipe
        self.name = name
        self._buffer: list[str] = []
        self._size = 0

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            other = sys.stderr if self is sys.stdout else sys.stdout
            if isinstance(other, _Stream) and other._buffer:
                other.flush()  # keep the order in which the two streams were written
            self._buffer.append(text)
            self._size += len(text)
            if self._size > 8192:
                self.flush()
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._buffer:
            text = "".join(self._buffer)
            self._buffer, self._size = [], 0
            self.pipe.output("stream", {"name": self.name, "text": text})

    def isatty(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise OSError("a throwaway's output stream has no file descriptor")

    @property
    def closed(self) -> bool:
        return False


def _child(
    start_r: int, result_w: int, out_w: int, err_w: int, warm: tuple[int, int, list[int]]
) -> int:
    """Get ready, wait for the run on ``start_r`` (see :meth:`_Child.hand_over`), run its cells;
    return the exit code. ``warm``: the pid, process group and threads of the kernel it was
    forked from."""
    import gc

    from IPython import get_ipython
    from jupyter_client.session import Session

    gc.freeze()  # never touch (copy) the parent's objects from the collector
    os.setpgid(0, 0)
    asyncio_events = sys.modules.get("asyncio.events")
    if asyncio_events is not None:  # the parent's loop is "running" in this thread
        asyncio_events._set_running_loop(None)
    signal.set_wakeup_fd(-1)  # the parent loop's self-pipe is shared with the parent
    pipe = _Pipe(result_w, 0)
    state = {"in_cell": False, "interrupted": False}

    def on_sigint(signum, frame):  # the budget ran out (the parent sends it only then)
        if state["in_cell"]:
            state["interrupted"] = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    _close_inherited_channels({start_r, result_w, out_w, err_w})
    # fd-level output (subprocesses, C code) to the parent, not to the kernel's capture pipes.
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.close(out_w)
    os.close(err_w)
    sys.stdout, sys.stderr = _Stream(pipe, "stdout"), _Stream(pipe, "stderr")

    def send(self, stream, msg_or_type, content=None, *args, **kwargs):
        """What the shell publishes (displays, results, errors, comms) becomes output lines."""
        if isinstance(msg_or_type, dict):
            msg_type, content = msg_or_type.get("msg_type"), msg_or_type.get("content")
        else:
            msg_type = msg_or_type
        if msg_type in _OUTPUT_TYPES:
            for s in (sys.stdout, sys.stderr):  # earlier prints first
                if isinstance(s, _Stream):
                    s.flush()
            pipe.output(msg_type, content or {})
        return None

    Session.send = send
    shell = get_ipython()
    _fast_plain_python(shell)
    run = _receive(start_r)
    if run is None:  # discarded unused, or the kernel went away
        return 0
    spec, compiled, copy_dir = run
    cells = spec["cells"]
    pipe.max_output = int(spec["max_output_bytes"])
    _remember_sources(cells, compiled)
    if copy_dir is not None:
        folder, relative = copy_dir
        work = os.path.join(folder, "w")
        with os.scandir(spec["work_dir"]) as entries:
            empty = next(entries, None) is None
        if empty:  # the usual case for grading: nothing to copy
            os.mkdir(work)
        else:
            shutil.copytree(spec["work_dir"], work, symlinks=True)
        os.chdir(os.path.normpath(os.path.join(work, relative)))
    if spec.get("grading"):
        # It holds its warm kernel's session key and knows its sockets: connected to them, it
        # had the warm kernel run code of its own; stopped by it, the warm kernel stalled every
        # attempt behind it (see attempt_filter). Both raise: the run ends before any cell.
        from . import attempt_filter

        if attempt_filter.supported():
            protected = attempt_filter.warm_kernel_pids(*warm)
            attempt_filter.install([*spec.get("siblings", ()), *protected])
        # Its own folders only (its working copy, scratch space): not its warm kernel's /proc.
        attempt_filter.confine_writes(
            [os.getcwd(), tempfile.gettempdir(), "/tmp", "/dev/shm", "/dev"]
        )  # fmt: skip
    for number, cell in enumerate(cells):
        pipe.line({"start": number})
        pipe.capturing = bool(cell.get("capture"))
        pipe.essentials = set()
        state["interrupted"] = False
        shell._last_traceback = None
        state["in_cell"] = True
        try:
            silent = bool(cell.get("silent"))
            if compiled[number] is not None:
                outcome = _run_hidden(shell, compiled[number])
            else:
                outcome = shell.run_cell(cell["code"], store_history=not silent, silent=silent)
        except KeyboardInterrupt:
            outcome = None
        finally:
            state["in_cell"] = False
        for s in (sys.stdout, sys.stderr):
            if isinstance(s, _Stream):
                s.flush()
        pipe.capturing = False
        error = None
        if outcome is None or not outcome.success:
            exc = (outcome.error_in_exec or outcome.error_before_exec) if outcome else None
            error = {"ename": type(exc).__name__ if exc else "KeyboardInterrupt",
                     "evalue": str(exc) if exc else "",
                     "traceback": list(shell._last_traceback or [])}  # fmt: skip
        status = "timeout" if state["interrupted"] else "error" if error else "ok"
        pipe.line({"end": number, "status": status, "error": error,
                   "execution_count": shell.execution_count - (0 if silent else 1)})  # fmt: skip
        if status in cell.get("stop_on", ()):
            return 0
    expression = spec.get("read")
    if expression:
        try:
            text = _dumps(eval(expression, shell.user_ns), allow_nan=False)  # noqa: S307
            pipe.line({"read": text})
        except Exception as exc:  # noqa: BLE001 - reported as "missing or not JSON data"
            pipe.line({"read_error": {"ename": type(exc).__name__, "evalue": str(exc)}})
    pipe.line({"done": True})  # the parent answers now, while this process is torn down
    return 0


def _receive(start_r: int) -> tuple[dict, list, tuple[str, str] | None] | None:
    """The run :meth:`_Child.hand_over` sent: (spec, compiled hidden cells, copy target)."""
    data = b""
    while len(data) < 8 or len(data) < 8 + int.from_bytes(data[:8], "little"):
        chunk = os.read(start_r, 1 << 20)
        if not chunk:
            return None
        data += chunk
    os.close(start_r)
    spec, compiled, copy_dir = marshal.loads(data[8:])
    return spec, list(compiled), tuple(copy_dir) if copy_dir is not None else None


def _remember_sources(cells: list[dict], compiled: list) -> None:
    """Tracebacks of a hidden cell show its lines (a spare was forked before they were known)."""
    import linecache

    for cell, code in zip(cells, compiled):
        if code is not None and code.co_filename not in linecache.cache:
            lines = cell["code"].splitlines(keepends=True)
            linecache.cache[code.co_filename] = (len(cell["code"]), None, lines, code.co_filename)


# Hidden cells compiled by this kernel, by source (a task's setup, collect and grader cells recur
# for every attempt at it), with the total source length kept under a bound.
_COMPILED: dict[str, object] = {}
_COMPILED_SOURCE_LIMIT = 8 * 1024 * 1024
_compiled_source = [0]


def _hidden_code(source: str):
    """``source`` compiled once in this kernel (each child is handed the code object), or None
    when it is not plain Python (magics, shell escapes, top-level ``await``): then the child
    runs it with IPython's ``run_cell``. Hidden cells are task code, never attempt code.

    A silent ``run_cell`` compiles a cell several times over (the transforms' check, the async
    check, the parse, a compile per statement): about 5 ms for the kilobytes of harness a task's
    hidden cells hold. Compiled as one module here, it costs a child nothing.
    """
    import ast
    import linecache

    if source in _COMPILED:
        _COMPILED[source] = code = _COMPILED.pop(source)  # most recently used last
        return code
    from IPython import get_ipython

    shell = get_ipython()
    code = None
    if shell is not None:
        manager = shell.input_transformer_manager
        lines = (source if source.endswith("\n") else source + "\n").splitlines(keepends=True)
        for transform in manager.cleanup_transforms + manager.line_transforms:
            lines = transform(lines)
        name = f"<hidden cell {len(_COMPILED)}-{hash(source) & 0xFFFFFFFF:08x}>"
        flags = shell.compile.flags | getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
        try:
            candidate = compile("".join(lines), name, "exec", flags, dont_inherit=True)
        except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError):
            candidate = None
        if candidate is not None and not candidate.co_flags & _CO_COROUTINE:
            code = candidate
            # Tracebacks of a hidden cell show its lines, as IPython's own cells do.
            linecache.cache[name] = (len(source), None, lines, name)
    while _COMPILED and _compiled_source[0] + len(source) > _COMPILED_SOURCE_LIMIT:
        old_source = next(iter(_COMPILED))
        old = _COMPILED.pop(old_source)
        _compiled_source[0] -= len(old_source)
        if old is not None:
            linecache.cache.pop(old.co_filename, None)
    _COMPILED[source] = code
    _compiled_source[0] += len(source)
    return code


_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE: the cell awaits at top level


class _HiddenOutcome:
    """What :func:`_run_hidden` came to, read as IPython's ``ExecutionResult`` is."""

    def __init__(self, error: BaseException | None) -> None:
        self.error_in_exec = error
        self.error_before_exec = None
        self.success = error is None


def _run_hidden(shell, code) -> _HiddenOutcome:
    """Run a compiled hidden cell as a silent ``run_cell`` would: in the user namespace, with
    the execute events (the inline backend closes figures on ``post_execute``), and an error
    formatted by IPython's traceback."""
    shell.events.trigger("pre_execute")
    error = None
    try:
        exec(code, shell.user_global_ns, shell.user_ns)  # noqa: S102 - the task's hidden code
    except (Exception, KeyboardInterrupt, SystemExit) as exc:  # as run_cell: reported
        error = exc
        shell.showtraceback()
    finally:
        shell.events.trigger("post_execute")
    return _HiddenOutcome(error)


def _fast_plain_python(shell) -> None:
    """Skip IPython's tokenizing input transforms for cells that are plain Python.

    Those transforms (``%magic``, ``!cmd``, ``x?``, ``a = !cmd``) only rewrite lines that are
    not Python, so a cell that parses after the cheap line-based cleanups comes out unchanged;
    tokenizing costs about a millisecond per kilobyte, and task cells carry kilobytes of
    harness. Anything that does not parse goes through IPython's own path.
    """
    import ast

    manager = shell.input_transformer_manager
    slow = manager.transform_cell
    flags = ast.PyCF_ONLY_AST | getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)

    def transform_cell(cell: str) -> str:
        lines = (cell if cell.endswith("\n") else cell + "\n").splitlines(keepends=True)
        for transform in manager.cleanup_transforms + manager.line_transforms:
            lines = transform(lines)
        candidate = "".join(lines)
        try:
            compile(candidate, "<cell>", "exec", flags, dont_inherit=True)
        except (SyntaxError, ValueError):
            return slow(cell)
        return candidate

    manager.transform_cell = transform_cell


_OUTPUT_TYPES = frozenset({
    "stream", "display_data", "update_display_data", "execute_result", "error", "clear_output",
    "comm_open", "comm_msg",
})  # fmt: skip


def _close_inherited_channels(keep: set[int]) -> None:
    """Close this child's copies of the kernel's sockets, event fds, epoll sets and pipes, so
    attempt code cannot write into the warm kernel's messaging (the parent keeps its own)."""
    for fd in _open_fds():
        if fd <= 2 or fd in keep:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("socket:", "pipe:", "anon_inode:")):
            try:
                os.close(fd)
            except OSError:
                pass


def _open_fds() -> list[int]:
    """This process's descriptors. At sandbox level limits a fork cannot list /proc/self/fd
    (Landlock grants the kernel's own /proc folder, and a fork has a pid of its own; reading a
    link in it still works): then every number below the descriptor limit that poll does not
    call invalid."""
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        pass
    import resource

    bound = max(resource.getrlimit(resource.RLIMIT_NOFILE))
    bound = bound if 0 < bound <= 1 << 16 else 1 << 16  # unlimited: as many as a poll takes
    poller = select.poll()
    for fd in range(bound):
        poller.register(fd, 0)
    invalid = {fd for fd, events in poller.poll(0) if events & select.POLLNVAL}
    return [fd for fd in range(bound) if fd not in invalid]


def _json_default(value):
    """What jupyter_client's Session encodes that JSON cannot (bytes: base64; dates: ISO)."""
    from jupyter_client.jsonutil import json_default

    return json_default(value)


def _size(content: dict) -> int:
    try:
        return len(_dumps(content, default=str))
    except (TypeError, ValueError, RecursionError):
        return 0


def _cut(content: dict, limit: int) -> dict:
    """A result or error cut to about ``limit``: long text kept cut, other big parts dropped."""
    content = dict(content)
    data = {}
    for mime, value in (content.get("data") or {}).items():
        if isinstance(value, str) and len(value) > limit:
            if mime == "text/plain":
                data[mime] = value[: limit + 1]
        elif _size({"v": value}) <= limit:
            data[mime] = value
    if "data" in content:
        content["data"] = data
    if "traceback" in content:
        lines, used = [], 0
        for line in content["traceback"]:
            used += len(line)
            if used > limit:
                break
            lines.append(line)
        content["traceback"] = lines
    if _size(content.get("metadata") or {}) > limit:
        content["metadata"] = {}
    return content
