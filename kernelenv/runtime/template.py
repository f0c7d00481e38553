"""The template process: does the fork-safe part of an ipykernel start once, then forks ready kernels.

Run by :class:`kernelenv.runtime.template_host.KernelTemplate` as
``python -c "from kernelenv.runtime.template import main; main()" --socket PATH -- <kernel args>``.
Standard library and ipykernel only (plus the child bootstrap, :mod:`kernelenv.runtime.child`): whatever this
process imports, every kernel forked from it holds.

In the template (no thread and no ZMQ context ever exists here): the imports (ipykernel,
IPython, jupyter_client, tornado, zmq, and the modules a first execute imports lazily),
``IPKernelApp`` config parsing, the profile directory, the pdb patch, the
``ZMQInteractiveShell`` with its extensions and ``exec_lines``, warm-up cells run through the
shell's real execution path, the pool's own warm-up code, a socket-less ``IPythonKernel``,
then ``gc.freeze()`` so the children's collectors never touch (and so copy) these objects.

In each child, before any agent code: at the bwrap level its own namespaces and mounts under
an init of its own, its own session and process group, death with the template
(``PR_SET_PDEATHSIG``), its pids and memory cgroups, resource limits, Landlock at the limits
level, capabilities dropped and ``no_new_privs``, the kernel's environment and working
directory, stdin, stdout and stderr on /dev/null (the template's are the server's); then
:func:`~kernelenv.runtime.child.attach_and_run` builds its sockets and threads.

Protocol, on a Unix stream socket, one JSON object per line:

- ``-> {"op": "spawn", "connection_file", "cwd", "env", "rlimits": {"AS": [soft, hard]},
  "cgroup_procs": [paths], "drop_capabilities": bool, "landlock": [rules] | null,
  "namespaces": {...} | null}`` (``landlock``: the limits level's rules, see
  :mod:`kernelenv.sandbox.landlock`; ``namespaces``: the bwrap level's, for a template that
  runs inside bubblewrap, see :mod:`kernelenv.sandbox.namespaces`);
- ``<- {"pid": N}`` from the template (N as the template sees it);
- ``<- {"early": N}`` from the child itself as it starts, if the request says ``"announce":
  true`` (the bwrap level: the host moves it into its cgroups meanwhile, see ``bound``);
- ``<- {"bound": N}`` from the child itself once its sockets are bound. The host reads it with
  ``SO_PASSCRED``, so Linux hands it the child's pid as the *host* sees it;
- ``<- {"exit": N, "status": code}`` when the child exits (negative: killed by that signal).

The connection is the child's lease: when the host closes it, the template SIGKILLs the child.
When the owner dies, the template (told by ``PR_SET_PDEATHSIG`` with SIGTERM) kills every
kernel and what is left in their cgroups before it exits.
Only the template's parent may connect (checked with ``SO_PEERCRED``): a kernel cannot ask
its template for more kernels outside its own cgroup. The template is a child subreaper:
orphans of its kernels are re-parented to it and reaped.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import importlib.util
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time

from kernelenv.runtime.child import attach_and_run, child_after_fork

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

READY_LINE = b"READY"
_OWNER_PID = 0  # the process that started the template (set by main)
# Each child's cgroup.procs files, until its lease is dropped: a child reaped earlier may have
# left processes in its cgroups, which a host that dies next can no longer remove.
_KERNEL_CGROUPS: dict[int, list[str]] = {}
_REAPED: set[int] = set()  # children reaped whose lease is still held (their pid may be reused)

# Imported lazily by a kernel's first execute_request or kernel_info, or while a child
# attaches: imported here once instead of in every child. Not matplotlib_inline: imported
# before the shell exists, it would not hook itself in, and figures would not be shown.
DEFAULT_PREIMPORTS = (
    "ipykernel.comm", "ipykernel.comm.comm", "ipykernel.comm.manager", "comm", "comm.base_comm",
    "jupyter_client.jsonutil", "dateutil.parser", "ipykernel.jsonutil", "IPython.core.completer",
    "IPython.core.magics", "IPython.display", "ipykernel.subshell_manager",
    "ipykernel.socket_pair", "ipykernel.subshell", "psutil",
    "ipykernel.debugger", "tornado.gen", "tornado.locks", "tornado.queues",
    "tornado.platform.asyncio", "faulthandler", "IPython.extensions.storemagic",
)  # fmt: skip

# Cells run once through the shell so their lazy imports and first-use setup happen here. The
# failing one builds IPython's traceback formatter (about 100 ms in each child otherwise).
WARMUP_CELLS = (
    "1+1",
    "print('x')",
    "def _kernelenv_warm():\n    raise KeyboardInterrupt\n_kernelenv_warm()",
)

_LIBC = ctypes.CDLL(None, use_errno=True)
_SANDBOX_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox")


def _load_sandbox_module(name: str) -> object:
    """A standard-library-only module of kernelenv.sandbox, loaded from its file: importing
    the package would bring pydantic and the rest of kernelenv into every kernel."""
    spec = importlib.util.spec_from_file_location(f"_kernelenv_{name}", os.path.join(_SANDBOX_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# The bwrap level's namespaces (sandbox/namespaces.py) and the limits level's Landlock
# (sandbox/landlock.py), loaded once in the template.
namespaces = _load_sandbox_module("namespaces")
landlock = _load_sandbox_module("landlock")


def _prctl(option: int, arg: int = 0) -> None:
    if _LIBC.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def prepare(kernel_args: list[str], preimports: list[str], warmup_code: str | None) -> object:
    """Everything fork-safe of an ipykernel start; returns the ``IPKernelApp``."""
    sys.modules["debugpy"] = None  # as the kernelspec's boot code: no debugger
    from ipykernel.compiler import XCachingCompiler
    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelapp import IPKernelApp
    from ipykernel.zmqshell import ZMQInteractiveShell

    for name in preimports:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional module: say so and go on
            print(f"kernelenv template: pre-import {name} failed: {exc}", file=sys.stderr)
    app = IPKernelApp.instance()
    # BaseIPythonApplication.initialize: command line and config files, profile directory.
    # The connection file is a placeholder, replaced in each child.
    super(IPKernelApp, app).initialize(["-f", "/nonexistent/template.json", *kernel_args])
    app.init_pdb()
    app.init_blackhole()
    app.init_path()
    shell = ZMQInteractiveShell.instance(
        parent=app, profile_dir=app.profile_dir, user_ns={}, kernel=None,
        compiler_class=XCachingCompiler,
    )  # fmt: skip
    shell.configurables.append(app)
    app.shell = shell
    app.init_gui_pylab()
    app.init_extensions()
    app.init_code()
    with open(os.devnull, "w") as devnull:
        saved, sys.stdout = sys.stdout, devnull
        try:
            for code in WARMUP_CELLS:
                shell.run_cell(code, store_history=True)
        finally:
            sys.stdout = saved
    # Forget the warm-up: namespace, In/Out, history; children start at execution count 1.
    shell.reset(new_session=True)
    shell.execution_count = 1
    if warmup_code:
        # The pool's warm-up (pre-imports, data): run once here; its names stay in every
        # child's namespace, as they would in a kernel that ran it itself (silently).
        result = shell.run_cell(warmup_code, store_history=False, silent=True)
        if not result.success:
            print(f"kernelenv template: warm-up code failed: {result.error_in_exec or result.error_before_exec!r}",
                  file=sys.stderr)  # fmt: skip
    app.kernel = IPythonKernel.instance(
        parent=app, session=app.session, log=app.log, profile_dir=app.profile_dir,
        user_ns=shell.user_ns,
    )  # fmt: skip
    app.session.msg("status", {"execution_state": "idle"})  # warms the message code path
    gc.collect()
    gc.freeze()
    return app


def drop_capabilities() -> None:
    """Drop every capability for good (bounding, ambient, effective, permitted, inheritable)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    _LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = bytes(24)  # two zeroed {effective, permitted, inheritable} structs
    if _LIBC.capset(ctypes.c_char_p(header), ctypes.c_char_p(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def detach_stdio() -> None:
    """Point fds 0, 1 and 2 at /dev/null. The template's are the server's (its terminal, its
    log): agent code must not write fake log lines or terminal escapes into them. Failures
    of a child before this point (no agent code has run) still reach the server's log."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def contain_child(request: dict) -> None:
    """Apply a spawn request's containment to this (forked) process, before any agent code."""
    procs_files = request.get("cgroup_procs") or []
    for procs in [procs_files] if isinstance(procs_files, str) else procs_files:
        try:  # before any thread exists; the host checks it and moves us if this failed
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        except OSError:
            pass
    for name, (soft, hard) in (request.get("rlimits") or {}).items():
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (soft, hard))
    if request.get("landlock"):  # the limits level's file allow-list and signal scope
        landlock.restrict(request["landlock"])  # type: ignore[attr-defined]
    if request.get("drop_capabilities"):
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if os.geteuid() == 0:  # only root has capabilities to drop
            drop_capabilities()


def spawn_child(app: object, request: dict, lease_fd: int, server_fds: list[int]) -> int:
    """Fork a kernel for ``request``; returns its pid (in the template). Never returns in the child.

    With ``request["namespaces"]`` (the bwrap level), the pid returned is that of the
    episode's init (PID 1 of its namespace, the kernel's parent): the process whose exit
    ends the episode.
    """
    sandboxed = request.get("namespaces")
    if sandboxed:
        report_r, report_w = os.pipe()
    pid = os.fork()
    if pid:
        if not sandboxed:
            return pid
        os.close(report_w)
        return _read_init_pid(report_r, pid)
    if sandboxed:
        os.close(report_r)
        _enter_namespaces(request, report_w, lease_fd, server_fds)  # returns in the kernel
        if request.get("announce"):  # the host moves us into our cgroups while we set up
            try:
                os.write(lease_fd, json.dumps({"early": os.getpid()}).encode() + b"\n")
            except OSError:  # the host gave this kernel up
                os._exit(0)
    code = 1
    try:
        child_after_fork()
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the template (which dies with its owner)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for fd in server_fds:
            if fd != lease_fd:
                try:
                    os.close(fd)
                except OSError:
                    pass
        contain_child(request)
        if request.get("env") is not None:
            os.environ.clear()
            os.environ.update(request["env"])
        os.environ.pop("JPY_PARENT_PID", None)  # the template is the parent; pdeathsig instead
        if request.get("cwd"):
            os.chdir(request["cwd"])
        if "numpy.random" in sys.modules:  # else every child has the template's random state
            sys.modules["numpy.random"].seed()

        def bound() -> None:  # the host may connect now; the lease fd is the template's
            try:
                os.write(lease_fd, json.dumps({"bound": os.getpid()}).encode() + b"\n")
            except OSError:  # the host gave this kernel up (closed, or gone): nobody to serve
                os._exit(0)
            os.close(lease_fd)
            detach_stdio()  # before ipykernel captures fds 1 and 2, and before any agent code

        # The owner (the template's parent), as a cold kernel has it from JPY_PARENT_PID: a
        # live fork of this kernel watches it (so forks die with the owner), and with it set
        # ipykernel prints no "--existing" banner. ipykernel's own parent poller stays off
        # (parent_poller=False below): our parent is the template; PR_SET_PDEATHSIG does it.
        app.parent_handle = _OWNER_PID
        kernel, app.kernel = app.kernel, None
        attach_and_run(app, request["connection_file"], first_time=False, on_bound=bound,
                       prebuilt_kernel=kernel, parent_poller=False)  # fmt: skip
    except BaseException:
        _print_failure(request, lease_fd)
    os._exit(code)


def _print_failure(request: dict, lease_fd: int) -> None:
    """Print a child's start failure, unless the host gave the kernel up meanwhile (a start
    cancelled, a pool closing): it closed the lease, and then removes the kernel's folder
    under the child's feet, so the failure is expected, and noise."""
    try:
        with socket.fromfd(lease_fd, socket.AF_UNIX, socket.SOCK_STREAM) as lease:  # a dup
            closed = lease.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:  # open, nothing to read: the host still waits for this kernel
        closed = False
    except ConnectionResetError:  # closed by a host that had not read our "pid" line
        closed = True
    except OSError:  # the lease was handed over already (the kernel had bound): report
        closed = False
    if not closed:
        import traceback

        traceback.print_exc()


def _read_init_pid(report_r: int, child: int) -> int:
    """The init pid a sandboxed child reports (the child itself if it failed before that)."""
    try:
        poller = select.poll()
        poller.register(report_r, select.POLLIN)
        if poller.poll(10_000):
            data = os.read(report_r, 64)
            if data:
                return int(data)
        return child
    finally:
        os.close(report_r)


def _enter_namespaces(request: dict, report_w: int, lease_fd: int, server_fds: list[int]) -> None:
    """In the forked child: new namespaces and mounts, then init (PID 1) and the kernel under
    it. Returns in the kernel; the child itself exits once init is forked."""
    try:
        namespaces.enter(request["namespaces"])  # type: ignore[attr-defined]
        init = os.fork()  # the first process of the new PID namespace
    except BaseException:
        _print_failure(request, lease_fd)
        os._exit(1)
    if init:
        os.write(report_w, str(init).encode())
        os._exit(0)  # init is re-parented to the template (a subreaper), which reaps it
    os.close(report_w)
    try:
        namespaces.mount_proc()  # type: ignore[attr-defined]
        kernel = os.fork()
    except BaseException:
        _print_failure(request, lease_fd)
        os._exit(1)
    if kernel:  # init: holds none of the template's sockets, handles no signal
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for fd in server_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        detach_stdio()  # the kernel could write to them through /proc/1/fd
        namespaces.run_init(kernel)  # type: ignore[attr-defined]
    global _OWNER_PID
    _OWNER_PID = 1  # the owner is outside this PID namespace; init stands for it


def _peer_allowed(conn: socket.socket) -> bool:
    """Only the template's owner: its parent, or a process outside our PID namespace (pid 0)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid = struct.unpack("3i", creds)[0]
    return pid in (0, os.getppid())


def serve(app: object, sock_path: str) -> None:
    """The template's loop: accept spawn requests, reap children, report exits. Single-threaded."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    server.bind(sock_path)
    os.chmod(sock_path, 0o600)
    server.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, _owner_died)
    conns: dict[int, tuple[socket.socket, bytearray]] = {}
    lease: dict[int, int] = {}  # connection fd -> child pid
    by_pid: dict[int, socket.socket] = {}
    os.write(1, READY_LINE + b"\n")
    os.dup2(2, 1)  # nobody reads the pipe any more; children inherit stdout = stderr
    # poll, not select: a template serving more than a thousand kernels holds a lease each.
    poller = select.poll()
    poller.register(server, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == server.fileno():
                conn, _ = server.accept()
                if not _peer_allowed(conn):
                    conn.close()
                    continue
                conns[conn.fileno()] = (conn, bytearray())
                poller.register(conn, select.POLLIN)
            elif fd == wake_r:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
            elif fd in conns:
                _serve_connection(app, conns[fd][0], conns, lease, by_pid,
                                  [server.fileno(), wake_r, wake_w])  # fmt: skip
                if fd not in conns:  # closed
                    poller.unregister(fd)
        _reap(by_pid)


def _serve_connection(app, conn, conns, lease, by_pid, own_fds) -> None:  # noqa: ANN001
    fd = conn.fileno()
    _, buf = conns[fd]
    try:
        data = conn.recv(65536)
    except OSError:
        data = b""
    if not data:  # lease dropped: the child goes too, with whatever it started
        pid = lease.pop(fd, None)
        if pid is not None:
            _end_episode(pid)
            by_pid.pop(pid, None)
        del conns[fd]
        conn.close()
        return
    buf += data
    if len(buf) > 1 << 20:  # a request is a few KiB; anything else is not our host talking
        conn.close()
        del conns[fd]
        return
    while b"\n" in buf:
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        request = json.loads(line)
        if request.get("op") == "spawn" and fd not in lease:
            pid = spawn_child(app, request, fd, [*own_fds, *conns])
            if pid in _REAPED:  # a reaped child's pid, reused: its old lease no longer names it
                _REAPED.discard(pid)
                for held, child in list(lease.items()):
                    if child == pid:
                        del lease[held]
            lease[fd] = pid
            by_pid[pid] = conn
            _KERNEL_CGROUPS[pid] = list(request.get("cgroup_procs") or [])
            try:
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            except OSError:  # the host already gave up: the child goes, as on a dropped lease
                _end_episode(pid)
                by_pid.pop(pid, None)
                lease.pop(fd, None)
                del conns[fd]
                conn.close()
                return
        elif request.get("op") == "ping":
            try:
                conn.sendall(b'{"pong": true}\n')
            except OSError:
                pass


def _owner_died(*_: object) -> None:
    """The owner died (PR_SET_PDEATHSIG sends SIGTERM): take every kernel down with what it
    started, then exit."""
    for pid in list(_KERNEL_CGROUPS):
        _end_episode(pid)
    os._exit(0)


def _end_episode(pid: int) -> None:
    """Kill child ``pid`` and what it started: its process group (unless reaped already), and
    the processes in its cgroups, which also hold those that left the group."""
    if pid not in _REAPED:  # once reaped, its number (and group's) may be another's by now
        _kill(pid, signal.SIGKILL)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    for _ in range(3):  # a process may fork while the sweep runs
        for procs in _KERNEL_CGROUPS.get(pid, ()):
            try:
                with open(procs) as f:
                    pids = [int(line) for line in f if line.strip()]
            except (OSError, ValueError):
                continue
            for member in pids:
                _kill(member, signal.SIGKILL)
    _KERNEL_CGROUPS.pop(pid, None)
    _REAPED.discard(pid)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(by_pid: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = by_pid.pop(pid, None)
        if pid in _KERNEL_CGROUPS:
            _REAPED.add(pid)
        if conn is not None:
            report = {"exit": pid, "status": os.waitstatus_to_exitcode(status)}
            try:
                conn.sendall(json.dumps(report).encode() + b"\n")
            except OSError:
                pass


def main(argv: list[str] | None = None) -> None:
    """Entry point of the template process (see the module docstring for the command line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    kernel_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, kernel_args = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(prog="kernelenv-template")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--preimport", default="", help="comma-separated modules to import")
    parser.add_argument("--warmup-file", help="a file of Python code run once in the template")
    parser.add_argument("--in-sandbox", action="store_true",
                        help="run by bubblewrap: the parent is its init (PID 1), not the owner")  # fmt: skip
    args = parser.parse_args(argv)
    # SIGTERM, handled once serving (until then a default SIGTERM kills as well).
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    global _OWNER_PID
    _OWNER_PID = os.getppid()
    if _OWNER_PID == 1 and not args.in_sandbox:  # the owner died before pdeathsig was set
        os._exit(1)
    # Orphans of kernels (their background processes) are re-parented here and reaped.
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    started = time.perf_counter()
    preimports = [*DEFAULT_PREIMPORTS, *(m for m in args.preimport.split(",") if m)]
    warmup_code = None
    if args.warmup_file:
        with open(args.warmup_file) as f:
            warmup_code = f.read()
    app = prepare(kernel_args, preimports, warmup_code)
    import threading

    if threading.active_count() != 1:  # a thread would be lost (and its locks held) in a fork
        print(f"kernelenv template: threads exist after warm-up: {threading.enumerate()}",
              file=sys.stderr)  # fmt: skip
        os._exit(3)
    serve(app, args.socket)


if __name__ == "__main__":
    main()
