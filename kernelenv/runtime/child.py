"""A forked kernel's bootstrap: give an IPython shell that already exists (built in a template,
or holding an episode's state) fresh messaging of its own, then run it.

What a child must build itself (none of it survives a fork): the ZMQ contexts and sockets, the
heartbeat, IOPub, control and shell-channel threads, the kernel object (it owns streams, locks
and the subshell manager), stdout/stderr capture and the asyncio/tornado event loop. What it keeps:
the imported modules, the parsed traitlets config (the IPKernelApp), the ZMQInteractiveShell and
its user namespace.

Traps handled here:
- Nothing of the parent's messaging may be closed or garbage-collected in the child: a ZMQ
  context is not fork-safe (term() can hang, close() can touch the parent's connections), and
  the parent's asyncio selector is an epoll instance *shared* with the parent (an EPOLL_CTL_DEL
  from the child unregisters the parent's fds). Old objects go to ``_GRAVEYARD`` and are never
  released; the child leaves with ``os._exit``.
- ipykernel's fd capture dup2's a pipe onto fds 1 and 2 that the parent's watcher thread
  reads: the child restores the original fds before building its own capture.
- ``Session`` refuses to send from a process whose pid differs from its creator's; the Session
  id would also be identical in every child (both reset). The template's numpy RandomState
  would be identical in every template child (reseeded there; a live fork keeps its parent's
  random state, as os.fork does).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
import uuid

# Objects of the parent's messaging, kept alive forever so no finalizer runs in the child.
_GRAVEYARD: list[object] = []

_APP_MESSAGING = (
    "context", "heartbeat", "iopub_thread", "control_thread", "shell_channel_thread", "poller",
    "kernel", "shell_socket", "stdin_socket", "control_socket", "iopub_socket", "debugpy_socket",
    "debug_shell_socket", "displayhook",
)  # fmt: skip


def reuse_parent_kernel(kernel):
    """Make the parent's IPythonKernel object usable in a live fork (instead of a new one).

    The fork happened inside one of its execute_request handlers, which never completes in the
    child: its asyncio locks are held, its abort flag may be set. Fresh ones are made; streams,
    sockets and threads are plugged in by attach_and_run (as for a template kernel). Saves the
    ~5-30 ms of building a kernel (its __init__ scans every loaded module).
    """
    kernel._main_asyncio_lock = asyncio.Lock()
    kernel._control_lock = asyncio.Lock()
    kernel._aborting = False
    return kernel


def abandon_parent_messaging(app, *, keep_comms: bool = False) -> None:
    """In a forked child: forget the parent's sockets, threads and loop without closing them."""
    old = {name: getattr(app, name, None) for name in _APP_MESSAGING}
    _GRAVEYARD.append(old)
    for name in _APP_MESSAGING:
        if old[name] is not None:
            setattr(app, name, None)
    # fds 1 and 2 are the parent's capture pipes (read by a thread that exists only there).
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        original = getattr(stream, "_original_stdstream_copy", None)
        if original is not None:
            os.dup2(original, fd)
    _GRAVEYARD.append((sys.stdout, sys.stderr))
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    # The old asyncio loop (and tornado's wrapper) stay referenced, never closed.
    try:
        old_loop = asyncio.get_event_loop_policy().get_event_loop()
    except Exception:
        old_loop = None
    _GRAVEYARD.append(old_loop)
    asyncio.events._set_running_loop(None)
    signal.set_wakeup_fd(-1)  # the old loop's self-pipe is shared with the parent
    # comm's global manager points at the parent's kernel.
    if not keep_comms:
        import ipykernel.ipkernel as ipk

        _GRAVEYARD.append(ipk._comm_manager)
        ipk._comm_manager = None


def attach_and_run(
    app, connection_file: str, *, first_time: bool, on_bound=None, prebuilt_kernel=None,
    parent_poller: bool = True,
) -> None:
    """Build messaging for ``app`` bound to ``connection_file`` and run the kernel; never returns.

    ``first_time``: the shell was never attached to a kernel: also run the shell-level init
    steps (extensions, exec_lines) that a template or a live fork has already done.
    ``on_bound``: called once every socket is bound, before the loop starts (a client that
    connects after that needs no reconnect: ZMQ's reconnect interval is 100 ms).
    ``parent_poller``: run ipykernel's "exit when the parent changes" poller (off for a
    re-parented live fork, which watches its owner itself).
    ``prebuilt_kernel``: an IPythonKernel to plug the new streams into: built without streams
    in the template, or the parent's own after :func:`reuse_parent_kernel` (live fork). None
    builds a new one around the existing shell.
    """
    from ipykernel.ipkernel import IPythonKernel
    from tornado import ioloop

    shell = _existing_shell()
    # New session id per kernel (the template's would be shared by every child).
    app.session.session = str(uuid.uuid4())
    app.session.digest_history.clear()
    app.session.pid = os.getpid()  # Session refuses to send "from a fork" otherwise
    # Ports come from the new connection file.
    app.connection_file = connection_file
    for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
        setattr(app, name, 0)
    # The host wrote this file before asking for the kernel; if it is gone, the host gave the
    # kernel up (and removed its folder). ipykernel's init_connection_file would instead fall
    # back to TCP on its own ports and recreate the folder.
    app.load_connection_file()
    if parent_poller:
        app.init_poller()
    app.init_sockets()
    _start_heartbeat(app)
    app.log_connection_info()
    if on_bound is not None:
        on_bound()
    app.init_io()
    app.init_signal()
    if prebuilt_kernel is not None:
        kernel = _plug_kernel(app, prebuilt_kernel)
    else:
        # A new kernel object around the existing shell: clear the singletons it registers.
        IPythonKernel.clear_instance()
        app.init_kernel()
        kernel = app.kernel
    # ``shell_class.instance(...)`` returned the existing shell untouched: point it at the kernel.
    shell.kernel = kernel
    shell.parent = kernel
    app.init_shell()
    if first_time:
        app.init_gui_pylab()
        app.init_extensions()
        app.init_code()
    sys.stdout.flush()
    sys.stderr.flush()
    # A fresh event loop; the parent's (if any) was abandoned above.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    if app.poller is not None:
        app.poller.start()
    kernel.start()
    app.io_loop = ioloop.IOLoop.current()
    try:
        app.io_loop.start()
    except KeyboardInterrupt:
        pass
    _exit_child(app)


def _start_heartbeat(app, timeout_s: float = 10.0) -> None:
    """ipykernel's ``init_heartbeat``, returning once the heartbeat socket is bound.

    Its thread binds on its own, after ``init_heartbeat`` returns: the kernel would report
    itself bound too early, and a failed bind (the folder removed by a host that gave the
    kernel up) would be printed by the thread instead of raised here.
    """
    import zmq
    from ipykernel.heartbeat import Heartbeat

    class ReportingHeartbeat(Heartbeat):
        def _bind_socket(self):  # noqa: ANN202
            try:
                return super()._bind_socket()
            except Exception as exc:  # noqa: BLE001 - raised in the main thread below
                self.bind_error = exc  # run() then waits on an unbound socket until _exit
            finally:
                self.bound.set()

    curve = {}  # CurveZMQ keys: recent ipykernel 7 releases only
    if hasattr(app, "curve_secretkey"):
        curve = {"curve_publickey": app.curve_publickey, "curve_secretkey": app.curve_secretkey}
    heartbeat = ReportingHeartbeat(
        zmq.Context(),  # its own, as ipykernel's: the GIL must not block it
        (app.transport, app.ip, app.hb_port),
        **curve,
    )
    heartbeat.bound = threading.Event()
    heartbeat.bind_error = None
    app.heartbeat = heartbeat
    app.hb_port = heartbeat.port
    heartbeat.start()
    if not heartbeat.bound.wait(timeout_s):
        raise TimeoutError(f"the heartbeat socket was not bound within {timeout_s} s")
    if heartbeat.bind_error is not None:
        raise heartbeat.bind_error


def _plug_kernel(app, kernel):
    """What IPKernelApp.init_kernel does, for a kernel object built in the template."""
    from zmq.eventloop.zmqstream import ZMQStream

    shell_stream = ZMQStream(app.shell_socket, app.shell_channel_thread.io_loop)
    app.shell_channel_thread.shell_stream = shell_stream
    control_stream = ZMQStream(app.control_socket, app.control_thread.io_loop)
    debugpy_stream = ZMQStream(app.debugpy_socket, app.control_thread.io_loop)
    app.control_thread.start()
    app.shell_channel_thread.start()
    kernel.ident = str(uuid.uuid4())  # the template's would be shared by every child
    kernel.session = app.session
    kernel.control_stream = control_stream
    kernel.debugpy_stream = debugpy_stream
    kernel.debug_shell_socket = app.debug_shell_socket
    kernel.shell_stream = shell_stream
    kernel.control_thread = app.control_thread
    kernel.shell_channel_thread = app.shell_channel_thread
    kernel.iopub_thread = app.iopub_thread
    kernel.iopub_socket = app.iopub_socket
    kernel.stdin_socket = app.stdin_socket
    kernel._stdout, kernel._stderr = sys.stdout, sys.stderr  # captured at __init__ in the template
    shell = kernel.shell
    shell.displayhook.session = app.session
    shell.displayhook.pub_socket = app.iopub_socket
    shell.displayhook.topic = kernel._topic("execute_result")
    shell.display_pub.session = app.session
    shell.display_pub.pub_socket = app.iopub_socket
    kernel.record_ports({name + "_port": port for name, port in app._ports.items()})
    app.kernel = kernel
    app.displayhook.get_execution_count = lambda: kernel.execution_count
    return kernel


def _existing_shell():
    from ipykernel.zmqshell import ZMQInteractiveShell

    if not ZMQInteractiveShell.initialized():
        raise RuntimeError("no ZMQInteractiveShell to attach (build it in the template first)")
    return ZMQInteractiveShell.instance()


def _exit_child(app) -> None:
    """Close this child's own messaging (bounded in time), then leave without finalizers."""
    signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
    signal.alarm(2)
    try:
        app.close()
    except BaseException:
        pass
    os._exit(0)


def child_after_fork(*, new_session: bool = True) -> None:
    """Process hygiene every forked kernel does first."""
    main = threading.main_thread()
    if hasattr(main, "_set_native_id"):  # Python 3.11 keeps the parent's thread id after a fork
        main._set_native_id()
    if new_session:
        os.setsid()  # own session and process group: killpg and message interrupts hit only it
    gc.enable()
