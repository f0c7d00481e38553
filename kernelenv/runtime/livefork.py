"""Live fork of a running kernel: n new kernels holding the parent's state at that moment.

Kernel side, :func:`fork_here` runs on the kernel's main thread (the host sends it as a silent
execute's ``user_expressions``, so the parent's history, ``_`` and execution count are
untouched). Per child it double-forks: the intermediate exits at once (reaped after the reply,
which does not wait for its exit), and the new kernel is re-parented to the host (a child
subreaper, see :func:`become_subreaper`) or, under bubblewrap, to the sandbox's init. The new
kernel abandons the parent's messaging and attaches fresh sockets and threads to the same shell
and user namespace (see :mod:`kernelenv.runtime.child`), then tells the host it is bound by
connecting to a Unix socket, whose peer credentials give the host the pid in its own PID
namespace.

A fork refuses (the reason goes back to the host) when it could not be faithful: Python threads
other than ipykernel's own (a child has only the forking thread), native threads other than
ZMQ's and an idle BLAS pool (one could hold a lock), or child processes of the kernel.

Host side, :func:`fork_kernel` gives each child a directory and a connection file, made through
descriptors that a link planted by the agent cannot redirect (:mod:`kernelenv.sandbox.host_paths`),
asks the parent to fork (each child copies the parent's working directory itself, inside the
sandbox) and returns the children as ready :class:`~kernelenv.runtime.kernel.Kernel` objects
managed by pid.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from jupyter_client import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner

from ..errors import ForkError, KernelStartError
from ..sandbox.cgroup import pid_alive
from ..sandbox.host_paths import (
    OwnedFolder,
    fd_path,
    make_new_dir,
    open_subdir,
    open_trusted_dir,
    write_new_file,
)
from .limits import bounded_context

if TYPE_CHECKING:
    from ..sandbox.cgroup import EpisodeCgroup
    from .kernel import Kernel

# -- kernel side -----------------------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36


# -- kernel side ---------------------------------------------------------------------------


def fork_problem() -> str | None:
    """Why this kernel cannot be forked faithfully right now, or None."""
    from ipykernel.kernelapp import IPKernelApp

    from .reaping import EXITING, reap_exiting

    throwaway = sys.modules.get("kernelenv.runtime.throwaway")
    reap_exiting()
    # Children that have done their part and are exiting, and a throwaway's waiting spare.
    dying = throwaway.exiting() if throwaway is not None else set(EXITING)
    app = IPKernelApp.instance()
    known = {threading.main_thread()}
    for t in (app.control_thread, app.shell_channel_thread, app.heartbeat, app.poller):
        if t is not None:
            known.add(t)
    if app.iopub_thread is not None:
        known.add(app.iopub_thread.thread)
    for stream in (sys.stdout, sys.stderr):
        t = getattr(stream, "watch_fd_thread", None)
        if t is not None:
            known.add(t)
    hist = getattr(getattr(app, "shell", None), "history_manager", None)
    if getattr(hist, "save_thread", None) is not None:
        # IPython's history writer (file-backed history only; kernelenv uses ":memory:").
        # The child does not get one: its history stays in memory.
        known.add(hist.save_thread)
    known.update(_HOST_WATCHERS)
    # pyzmq's zero-copy garbage collector (started by the first large message sent): it only
    # waits on an inproc socket of the messaging a fork abandons.
    garbage = getattr(sys.modules.get("zmq.utils.garbage"), "gc", None)
    if getattr(garbage, "thread", None) is not None:
        known.add(garbage.thread)
    mgr = getattr(app.shell_channel_thread, "_manager", None)
    for sub in getattr(mgr, "_cache", {}).values():  # subshells
        known.add(sub)
    extra = [t for t in threading.enumerate() if t not in known and t.is_alive()]
    if extra:
        names = ", ".join(sorted(t.name for t in extra))
        return f"user threads are running ({names}); a fork would copy only this one"
    # This thread by its id now: in a kernel that is itself a fork, the main thread's
    # recorded native_id is still the one it had in the process it was forked from.
    py_native = {t.native_id for t in threading.enumerate()} | {threading.get_native_id()}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        # A live fork at sandbox level limits: Landlock grants its kernel's /proc folder, not
        # its own. Its native threads cannot be listed (a fork of it may inherit a held lock:
        # then it times out); its child processes, waitid tells.
        return _children_problem_without_proc()
    unknown = []
    for tid in tids:
        if int(tid) in py_native:
            continue
        try:
            comm = open(f"/proc/self/task/{tid}/comm").read().strip()
        except OSError:
            continue
        if comm.startswith("ZMQbg/"):
            continue  # the parent's ZMQ I/O threads: abandoned with their context
        unknown.append(comm)
    allowed_blas = _blas_pool_threads()
    if len(unknown) > allowed_blas:
        return (
            f"native threads of unknown origin are running ({len(unknown)}: "
            f"{', '.join(sorted(set(unknown)))}); a fork could inherit a held lock"
        )
    children = []
    for tid in tids:
        try:
            children += open(f"/proc/self/task/{tid}/children").read().split()
        except OSError:
            pass
    children = [pid for pid in children if int(pid) not in dying]
    if children:
        return f"the kernel has child processes ({', '.join(children)}) that a fork cannot copy"
    return None


def _children_problem_without_proc() -> str | None:
    """:func:`fork_problem`'s child-process check for a kernel that cannot read its /proc."""
    from .reaping import reap_exiting

    reap_exiting(wait=True)  # children that are exiting: they end at once
    try:  # WNOWAIT: a child that has exited stays for its owner to reap
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return "the kernel has child processes that a fork cannot copy"


def _no_memory_access() -> None:
    """Make this kernel non-dumpable, and so the forks it makes (they inherit the flag): each
    fork is an episode of its own, run by the same user and, where there is no PID namespace
    between them (levels limits and none), it could otherwise read and write the memory of its
    parent and its siblings (``process_vm_readv``/``writev``, ptrace)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0


_HOST_WATCHERS: list[threading.Thread] = []


def _keep_dying_with_host(app) -> bool:
    """In a fork: keep "exit when the owner (JPY_PARENT_PID) exits" working.

    ipykernel's ParentPoller exits the kernel when its parent pid changes; a double-forked child
    is re-parented (to the host if the host is a child subreaper, else to init, and at first
    it is the short-lived intermediate), and with init as parent the poller would kill the
    fork at once. So the fork watches the owner through a pidfd in a small thread instead.
    Returns whether it does (then the stock poller must not run).
    """
    owner = int(app.parent_handle or 0)
    if owner in (0, 1):  # no owner to watch (under bwrap: --die-with-parent does it)
        return False
    try:
        pidfd = os.pidfd_open(owner)
    except OSError:
        os._exit(1)  # the owner is already gone

    def watch() -> None:
        import select

        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll()
        os._exit(1)

    t = threading.Thread(target=watch, name="kfork-owner-watch", daemon=True)
    t.start()
    _HOST_WATCHERS.append(t)
    return True


def _blas_pool_threads() -> int:
    """Threads an idle OpenBLAS pool may hold (it re-creates them in a child via pthread_atfork)."""
    if "numpy" not in sys.modules:
        return 0
    try:
        import numpy as np

        cfg = np.show_config(mode="dicts")
        name = cfg["Build Dependencies"]["blas"]["name"]
    except Exception:
        name = ""
    if "openblas" not in str(name).lower():
        return 0
    return max(0, (os.cpu_count() or 1) - 1)


def fork_here(
    connection_files: list[str], cwds: list[str | None] | None = None,
    ready_sockets: list[str | None] | None = None, copy_from: str | None = None,
) -> dict:  # fmt: skip
    """Fork this kernel once per connection file. Returns {"pids": [...]} or {"refused": why};
    a child that failed before starting has the reason as a string in place of its pid.

    ``ready_sockets``: Unix sockets the host listens on; each child connects to its own once
    bound, so the host learns the child's pid in the host's PID namespace (SO_PEERCRED), which
    differs from ours inside bubblewrap.
    ``copy_from``: a folder each child copies to its ``cwd`` first (the parent's working
    directory). The copy runs here, in this kernel's sandbox and with its rights, never on the
    host: links in it are kept as links and lead nowhere the kernel could not go already.
    """
    from ipykernel.kernelapp import IPKernelApp

    from .child import abandon_parent_messaging, attach_and_run, reuse_parent_kernel
    from .reaping import EXITING, reap_later

    throwaway = sys.modules.get("kernelenv.runtime.throwaway")
    if throwaway is not None:  # a child waiting for a throwaway run: not the forks' to reach
        throwaway.discard_spare()
    problem = fork_problem()
    if problem is not None:
        return {"refused": problem}
    _no_memory_access()
    app = IPKernelApp.instance()
    cwds = cwds or [None] * len(connection_files)
    ready_sockets = ready_sockets or [None] * len(connection_files)
    pipes = []
    sys.stdout.flush()
    sys.stderr.flush()
    for cf, cwd, ready in zip(connection_files, cwds, ready_sockets):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # intermediate
            try:
                os.close(r)
                if copy_from and cwd:
                    try:
                        shutil.copytree(copy_from, cwd, symlinks=True)
                    except (OSError, shutil.Error) as exc:  # a full budget, files that changed
                        os.write(w, _copy_failure(exc).encode())
                        os._exit(0)
                grandchild = os.fork()
                if grandchild:
                    if ready:  # the host learns "bound" from the ready socket: answer now
                        os.write(w, str(grandchild).encode())
                    # EOF now: closed by the exit, it would come after the unmapping of this
                    # process's copy of the kernel's memory, which nobody needs to wait for.
                    os.close(w)
                    os._exit(0)
                # -- the new kernel --
                if ready:  # the parent reads the pipe to EOF: don't hold it open until bound
                    os.close(w)
                EXITING.clear()  # its parent's children: a pid there may come to be its own
                gc.freeze()  # never touch (copy) the parent's objects from the collector
                os.setsid()
                if cwd:
                    os.chdir(cwd)
                os.environ.pop("JPY_PARENT_PID", None)
                kernel = reuse_parent_kernel(app.kernel)
                abandon_parent_messaging(app, keep_comms=True)
                app.poller = None
                own_watch = _keep_dying_with_host(app)

                def bound() -> None:
                    if ready:
                        import socket

                        # Connecting is the message: the host reads our pid with SO_PEERCRED
                        # and closes at once (so nothing is sent: that could hit EPIPE).
                        with socket.socket(socket.AF_UNIX) as s:
                            s.connect(ready)
                    else:  # no ready socket: the parent answers once we are bound
                        os.write(w, str(os.getpid()).encode())
                        os.close(w)

                attach_and_run(
                    app, cf, first_time=False, on_bound=bound, parent_poller=not own_watch,
                    prebuilt_kernel=kernel,
                )  # fmt: skip
            except BaseException:
                import traceback

                traceback.print_exc(file=sys.__stderr__)
            os._exit(1)
        os.close(w)
        reap_later(pid)  # it exits at once: reaped after the reply
        pipes.append(r)
    pids = []
    for r in pipes:
        data = b""
        while chunk := os.read(r, 64):
            data += chunk
        os.close(r)
        pids.append(None if not data else int(data) if data.isdigit() else data.decode(errors="replace"))
    return {"pids": pids}


def _copy_failure(exc: OSError | shutil.Error) -> str:
    """Why the working directory could not be copied, in a line."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        errors = exc.args[0]  # (source, target, why) per file
        return (f"cannot copy the working directory: {len(errors)} files failed, for example "
                f"{str(errors[0][2])[:300]}")
    return f"cannot copy the working directory: {str(exc)[:300]}"


# -- host side ---------------------------------------------------------------------------------


def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (live forks), once."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


class ForkedProcess:
    """A Popen-like handle on a kernel that is not our child: a live fork, managed by pid.

    Exit status from ``waitpid`` when this process reaped it (a child subreaper), else from a
    pidfd (liveness only, immune to pid reuse; an unknown status reads as killed).
    """

    def __init__(self, pid: int, pidfd: int | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = self.stderr = self.stdin = None
        self._pidfd: int | None = pidfd
        if pidfd is None:
            try:
                self._pidfd = os.pidfd_open(pid)
            except OSError:
                self._pidfd = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
        if self._pidfd is not None:
            if _pidfd_exited(self._pidfd):
                self.returncode = -signal.SIGKILL
        elif not pid_alive(self.pid):
            self.returncode = -signal.SIGKILL
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class AdoptedProvisioner(LocalProvisioner):  # type: ignore[misc]
    """jupyter_client's view of a kernel that already runs (a live fork): managed by pid.

    A fork has no command to relaunch, so a restart is refused; its cgroups (when the
    parent had them) are killed and removed with it.
    """

    cgroup: EpisodeCgroup | None = None

    def oom_killed(self) -> bool:
        """Whether the fork's memory limit has killed one of its processes."""
        return self.cgroup is not None and self.cgroup.oom_kills() > 0

    @classmethod
    def adopt(
        cls, manager: AsyncKernelManager, pid: int, cgroup: EpisodeCgroup | None,
        pidfd: int | None = None,
    ) -> AdoptedProvisioner:
        provisioner = cls(
            kernel_id=manager.kernel_id or "", kernel_spec=manager.kernel_spec, parent=manager
        )
        provisioner.process = ForkedProcess(pid, pidfd)
        provisioner.pid = provisioner.pgid = pid  # the fork called setsid()
        provisioner.connection_info = manager.get_connection_info()
        provisioner.cgroup = cgroup
        return provisioner

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        raise KernelStartError("a forked kernel cannot be restarted in place; fork again")

    async def send_signal(self, signum: int) -> None:
        await super().send_signal(signum)
        if signum == signal.SIGKILL and self.cgroup is not None:
            self.cgroup.kill_all(rounds=1)

    async def cleanup(self, restart: bool = False) -> None:
        process = self.process
        await super().cleanup(restart=restart)
        self.kill_now()
        if isinstance(process, ForkedProcess):
            process.close()

    def kill_now(self) -> None:
        """Kill the fork and everything in its cgroup, then remove the cgroup (no event loop)."""
        process = self.process
        if process is not None:
            process.kill()
        if self.cgroup is not None:
            self.cgroup.kill_all()
            self.cgroup.remove(timeout_s=1.0)
            self.cgroup = None


async def fork_kernel(
    parent: Kernel,
    n: int,
    *,
    base: Path,
    max_processes: int | None = None,
    memory_bytes: int | None = None,
    timeout_s: float = 30.0,
) -> list[Kernel]:
    """Fork ``parent`` ``n`` times; returns the children, started and ready.

    Each child gets ``base/<id>/run`` (connection file, IPC sockets) and ``base/<id>/work``, a
    copy of the parent's working directory (made by the child), where it starts. ``base``'s
    parent must be a folder only the host controls; ``base`` itself and everything below it
    may be in the agent's reach and are made without following links. With ``max_processes`` or
    ``memory_bytes`` each child gets cgroups of its own (it starts in its parent's) capping its
    processes and its memory.

    Raises:
        ForkError: the kernel refused (threads, child processes) or a child did not start.
    """
    from ..sandbox.cgroup import EpisodeCgroup, cgroup_parent, memory_cgroup_parent
    from .kernel import MAX_IPC_PATH_BYTES, Kernel

    prepared = []
    children: list[Kernel] = []
    # ``base`` may be in the agent's reach (the parent's byte budget): everything below its
    # parent is made through descriptors, never by following a path (see host_paths).
    base_fd = open_subdir(parent_fd := open_trusted_dir(base.parent), base.name, create=True)
    os.close(parent_fd)
    made: list[str] = []  # fork folders to remove if the fork fails
    try:
        for _ in range(n):
            # Short names: IPC socket paths must fit in 107 bytes, also under a long TMPDIR.
            kernel_id = f"f{uuid.uuid4().hex[:8]}"
            directory = base / kernel_id
            # A longer one would fail the child's bind, which its host would only see as a
            # child that never connects: say why now instead.
            endpoint = f"{directory / 'run' / 'kernel'}-65535"
            if len(os.fsencode(endpoint)) > MAX_IPC_PATH_BYTES:
                raise ForkError(
                    f"a fork's IPC socket path would be {len(os.fsencode(endpoint))} bytes, over "
                    f"the {MAX_IPC_PATH_BYTES} a Unix socket allows ({endpoint}); start the "
                    "pool under a shorter TMPDIR"
                )
            made.append(kernel_id)
            manager, ready, run_fd = _prepare_child(parent, base_fd, kernel_id, directory)
            prepared.append((kernel_id, directory, manager, ready, run_fd))
        # Each child copies the parent's working directory itself, inside the sandbox, where a
        # link the agent planted leads nowhere the agent could not already go; the host's
        # event loop waits on the reply meanwhile.
        expression = (
            "__import__('kernelenv.runtime.livefork', fromlist=['fork_here']).fork_here("
            f"{[m.connection_file for _, _, m, _, _ in prepared]!r}, "
            f"{[str(d / 'work') for _, d, _, _, _ in prepared]!r}, "
            f"{[str(d / 'run' / 'ready') for _, d, _, _, _ in prepared]!r}, "
            f"copy_from={str(parent.work_dir)!r})"
        )
        reply = await parent.evaluate(expression, timeout_s=timeout_s)
        if reply.get("status") != "ok":
            raise ForkError(
                f"the kernel could not fork: {reply.get('ename')}: {reply.get('evalue')}"
            )
        result = ast.literal_eval(reply["data"]["text/plain"])
        if "refused" in result:
            raise ForkError(f"this episode cannot be forked faithfully: {result['refused']}")
        loop = asyncio.get_running_loop()
        for (kernel_id, directory, manager, ready, _), pid in zip(prepared, result["pids"]):
            if isinstance(pid, str):
                raise ForkError(f"a forked kernel failed to start: {pid}")
            if pid is None:
                raise ForkError("a forked kernel failed to start")
            connection, _ = await asyncio.wait_for(loop.sock_accept(ready), timeout_s)
            credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            host_pid = struct.unpack("3i", credentials)[0]  # the pid in *our* namespace
            connection.close()
            pidfd = _claim_fork(host_pid, getattr(parent.manager.provisioner, "cgroup", None))
            try:
                cgroup = None
                pids_parent = cgroup_parent() if max_processes is not None else None
                memory_parent = memory_cgroup_parent() if memory_bytes is not None else None
                if pids_parent is not None or memory_parent is not None:
                    cgroup = EpisodeCgroup(
                        kernel_id,
                        max_processes=max_processes,
                        memory_bytes=memory_bytes,
                        pids_parent=pids_parent,
                        memory_parent=memory_parent,
                    )
                manager.provisioner = AdoptedProvisioner.adopt(manager, host_pid, cgroup, pidfd)
            except BaseException:
                os.close(pidfd)
                raise
            # A move waits out an RCU grace period (about 12 ms): it runs while the host
            # connects to the child and asks its kernel_info, and ends before the child is
            # handed out (before any step of it).
            moving = None
            if cgroup is not None:
                moving = asyncio.ensure_future(asyncio.to_thread(cgroup.add, host_pid))
                moving.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
            # Its folder is removed as it was made, through a descriptor: the path leads
            # through folders the agent can swap for links.
            folder = OwnedFolder(base_fd, kernel_id)
            try:
                children.append(await Kernel.adopt(
                    manager, directory, kernel_id, timeout_s, guards=parent.guards,
                    folder=folder,
                ))
            finally:
                if moving is not None:  # its thread runs to its end whatever happens here
                    with anyio.CancelScope(shield=True):
                        await asyncio.wait([moving])
            if moving is not None:
                moving.result()  # every thread of the child is in its cgroups, or it is killed
        return children
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(child.shutdown() for child in children))
        for _, _, manager, _, _ in prepared:
            kill_now = getattr(manager.provisioner, "kill_now", None)
            if kill_now is not None:
                kill_now()
        for kernel_id in made:
            shutil.rmtree(kernel_id, dir_fd=base_fd, ignore_errors=True)
        raise
    finally:
        for _, _, _, ready, run_fd in prepared:
            ready.close()
            with contextlib.suppress(OSError):
                os.unlink("ready", dir_fd=run_fd)
            os.close(run_fd)
        os.close(base_fd)


def _prepare_child(
    parent: Kernel, base_fd: int, kernel_id: str, directory: Path
) -> tuple[AsyncKernelManager, socket.socket, int]:
    """Make ``kernel_id/run`` in ``base_fd`` with the child's connection file and the socket it
    connects to once bound; returns its manager, that socket and the folder's descriptor.

    Raises:
        ForkError: something planted a link or a file where ours go.
    """
    from .kernel import ipc_endpoint

    run_fd = ready = None
    try:
        child_fd = make_new_dir(base_fd, kernel_id)
        try:
            run_fd = make_new_dir(child_fd, "run")
        finally:
            os.close(child_fd)
        manager = AsyncKernelManager(
            kernel_name=parent.manager.kernel_name,
            kernel_spec_manager=parent.manager.kernel_spec_manager,
            transport="ipc",
            # Abstract sockets if the parent has them (level limits: see kernel.ipc_endpoint).
            ip=ipc_endpoint(
                directory / "run", kernel_id, abstract=parent.manager.ip.startswith("@")
            ),
            connection_file=str(directory / "run" / "connection.json"),
            context=bounded_context(parent.max_message_bytes),
        )
        # A new key and new IPC paths, written by us: jupyter_client's own writer removes and
        # re-creates the file by path, which a link planted in between would redirect. For the
        # same reason it must not remove the IPC files by path at the end (a swapped ``run``
        # would make it delete another kernel's): the fork's folder goes as a whole.
        manager.cleanup_ipc_files = lambda: None
        info = _connection_info(manager)
        manager.load_connection_info(info)
        write_new_file(run_fd, "connection.json", json.dumps(info).encode())
        ready = socket.socket(socket.AF_UNIX)
        ready.bind(fd_path(run_fd, "ready"))  # bind never follows a link
        ready.listen(1)
        ready.setblocking(False)
        return manager, ready, run_fd
    except OSError as exc:
        if ready is not None:
            ready.close()
        if run_fd is not None:
            os.close(run_fd)
        raise ForkError(f"cannot make the fork's folder: {exc.strerror} ({exc.filename})") from exc


def _claim_fork(host_pid: int, parent_cgroup: EpisodeCgroup | None) -> int:
    """A pidfd of the process that connected as a fork, once it is shown to be in the parent
    kernel's cgroups, where the fork is born.

    Any process of the agent's could connect first (the socket is in its sandbox): adopting one
    of those hurts only the agent. What must not happen is the host adopting, moving into a
    cgroup and later killing a process of its own: one that took the pid of a connecting
    process that has exited since. The pidfd is opened before the check, and the check holds
    only if that process is still alive after it (so its pid was never reused in between).

    Raises:
        ForkError: the process is gone, or lives outside the parent's cgroups.
    """
    try:
        pidfd = os.pidfd_open(host_pid)
    except OSError as exc:
        raise ForkError("the process that connected as the fork is gone") from exc
    try:
        if parent_cgroup is not None and (
            host_pid not in parent_cgroup.pids() or _pidfd_exited(pidfd)
        ):
            raise ForkError(
                "the process that connected as the fork does not live in the parent "
                "kernel's cgroups (or is gone): refused"
            )
    except BaseException:
        os.close(pidfd)
        raise
    return pidfd


def _connection_info(manager: AsyncKernelManager) -> dict[str, Any]:
    """Fresh connection info for an IPC kernel at ``manager.ip``: a new key, ports 1 to 5
    (the fork's folder is new, so no socket of those names exists yet)."""
    return {
        "transport": "ipc", "ip": manager.ip, "key": str(uuid.uuid4()),
        "signature_scheme": "hmac-sha256", "kernel_name": manager.kernel_name,
        "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
    }


def _pidfd_exited(pidfd: int) -> bool:
    """Whether the process behind ``pidfd`` has exited (poll: descriptors may be past 1024).
    Not template_provisioner's readable_within: this module runs in kernels, which should
    not import pydantic with it."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))
