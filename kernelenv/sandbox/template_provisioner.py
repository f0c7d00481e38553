"""TemplateProvisioner: launch a kernel as a fork of a template process, contained as a cold one.

A kernelspec selects it with ``metadata.kernel_provisioner = {"provisioner_name":
"kernelenv-template", "config": {"template_socket": ..., "sandbox": {...}}}`` (see
:func:`kernelenv.sandbox.kernelspec.kernel_spec`), so episodes, grading, replay and nbclient
all get the fast path. The kernelspec's ``argv`` stays the cold launch: when the template is
not running (still starting, or dead), the kernel is started cold, with a logged warning.

The containment is :class:`~kernelenv.sandbox.provisioner.SandboxProvisioner`'s, applied by
the forked child to itself before any agent code: resource limits, capabilities dropped and
``no_new_privs`` (level ``limits``), the scrubbed environment, and the kernel's pids cgroup
(the child joins it first thing; the host writes the pid again once the kernel is bound,
before the first request, and checks it is there). Templates serve levels ``none`` and
``limits``; ``bwrap`` kernels are always started cold (see the README).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlets import Unicode

from .config import SandboxConfig
from .episode_fs import EpisodeFS
from .provisioner import SandboxProvisioner
from .watchdog import ProcessWatchdog

if TYPE_CHECKING:  # a kernel's cgroup object: anything with procs_file(s) and pids()
    from .cgroup import PidsCgroup

log = logging.getLogger(__name__)

TEMPLATE_PROVISIONER_NAME = "kernelenv-template"
# A spawn is a fork plus socket binding (a few ms); a template busy forking others may queue it.
SPAWN_TIMEOUT_S = 30.0
_MIB = 1024 * 1024



def template_problem(config: SandboxConfig) -> str | None:
    """Why kernels with this (resolved) sandbox config cannot be forked from a template, or None."""
    if config.level == "bwrap" and os.geteuid() != 0:
        return (
            "a bwrap template's children make their own namespaces and mounts, which needs "
            "root here; bwrap kernels start cold"
        )
    return None


class TemplateUnavailable(OSError):
    """The template cannot fork this kernel right now (not running, or it refused)."""


class ForkedProcess:
    """A Popen-like handle on a kernel forked by a template (so not our child).

    Its exit status comes from the template's report on the lease socket; liveness from a
    pidfd (immune to pid reuse). Closing the handle drops the lease: the template kills the
    kernel if it still runs.

    Args:
        pid: The kernel's pid as this process sees it.
        lease: The spawn connection to the template.
        template_pid: The kernel's pid as the template sees it (in its exit reports).
    """

    stdout = stderr = stdin = None

    def __init__(self, pid: int, lease: socket.socket, template_pid: int) -> None:
        self.pid = pid
        self.template_pid = template_pid
        self.returncode: int | None = None
        self._lease: socket.socket | None = lease
        self._buffer = b""
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:
            self._pidfd = None

    def poll(self) -> int | None:
        """The exit code once the kernel has exited (negative: killed by that signal), else None."""
        if self.returncode is not None:
            return self.returncode
        self._read_lease(timeout=0)
        if self.returncode is None and not self._running():
            self._read_lease(timeout=0.2)  # the template reports the status right after reaping
            if self.returncode is None:
                self.returncode = -signal.SIGKILL  # status unknown: it is gone in any case
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Block until the kernel exits; returns its exit code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        """Signal the kernel (through its pidfd: never a recycled pid)."""
        if self.returncode is not None:
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the kernel."""
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM the kernel."""
        self.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Drop the lease (the template kills the kernel if it still runs) and the pidfd."""
        if self._lease is not None:
            self._lease.close()
            self._lease = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _running(self) -> bool:
        if self._pidfd is not None:
            return not readable_within(self._pidfd, 0)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _read_lease(self, timeout: float) -> None:
        lease = self._lease
        if lease is None or not readable_within(lease.fileno(), timeout):
            return
        try:
            data = lease.recv(4096)
        except OSError:
            data = b""
        if not data:  # the template is gone: so is the kernel (PR_SET_PDEATHSIG)
            if not self._running():
                self.returncode = -signal.SIGKILL
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if message.get("exit") == self.template_pid:
                self.returncode = int(message["status"])


def readable_within(fd: int, timeout_s: float) -> bool:
    """Whether ``fd`` is readable (or hung up) within ``timeout_s``. poll, not select: a
    server holding thousands of sessions has descriptors past select's 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


async def spawn_from_template(
    socket_path: str,
    request: dict[str, Any],
    timeout_s: float = SPAWN_TIMEOUT_S,
    on_early: Callable[[int], None] | None = None,
) -> ForkedProcess:
    """Ask the template at ``socket_path`` to fork a kernel; returns once its sockets are bound.
    ``on_early`` gets the kernel's pid (as this process sees it) as soon as the kernel says it
    (``"announce"`` in the request), before it has bound anything.

    The kernel's pid as *this* process sees it comes from the kernel itself: it writes its
    "bound" line on the lease socket, and with ``SO_PASSCRED`` Linux attaches the sender's
    credentials, its pid translated into our PID namespace.

    Raises:
        TemplateUnavailable: the template is not running or closed the connection.
        TimeoutError: no bound kernel within ``timeout_s``.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, socket_path)
        except OSError as exc:  # no socket file yet, or a dead template's stale one
            raise TemplateUnavailable(exc.errno, f"template at {socket_path}: {exc}") from exc
        await loop.sock_sendall(sock, json.dumps({"op": "spawn", **request}).encode() + b"\n")
        template_pid = host_pid = None
        buffer = b""
        async with asyncio.timeout(timeout_s):
            while template_pid is None or host_pid is None:
                await _readable(loop, sock)
                data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
                if not data:
                    raise TemplateUnavailable(0, "the template closed the connection during spawn")
                sender = None
                for level, kind, payload in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                        sender = struct.unpack("3i", payload[:12])[0]
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "pid" in message:
                        template_pid = message["pid"]
                    elif "bound" in message:
                        host_pid = sender or message["bound"]
                    elif "early" in message and on_early is not None and sender:
                        on_early(sender)
                    elif "exit" in message:
                        raise TemplateUnavailable(
                            0, f"the forked kernel exited during start (status {message['status']})"
                        )
    except BaseException:
        sock.close()
        raise
    sock.setblocking(True)
    process = ForkedProcess(host_pid, sock, template_pid)
    process._buffer = buffer
    return process


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    future = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: future.done() or future.set_result(None))
    try:
        await future
    finally:
        loop.remove_reader(sock.fileno())


class TemplateProvisioner(SandboxProvisioner):
    """A :class:`SandboxProvisioner` whose launch is a fork of a template kernel process."""

    template_socket = Unicode(help="The template's Unix socket.").tag(config=True)
    template_root = Unicode(
        help="The pool's directory: all a bwrap template sees of the host's writable files."
    ).tag(config=True)

    _forked: ForkedProcess | None = None

    @property
    def forked(self) -> bool:
        """Whether the running kernel was forked from the template (False: started cold)."""
        return self._forked is not None

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        """Fork the kernel from the template; start ``cmd`` cold if the template cannot."""
        if not self.template_socket or template_problem(self.config_model) is not None:
            return await super().launch_kernel(cmd, **kwargs)
        cgroup = self._cgroup
        early: tuple[int, asyncio.Future] | None = None  # the pid the kernel said, its move

        def move_early(pid: int) -> None:
            nonlocal early
            if cgroup is not None and early is None:
                move = asyncio.ensure_future(asyncio.to_thread(_ensure_in_cgroup, pid, cgroup))
                move.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
                early = (pid, move)

        try:
            process = await spawn_from_template(
                self.template_socket, self._request(kwargs), on_early=move_early
            )
        except (TemplateUnavailable, TimeoutError, OSError) as exc:
            log.warning("kernel template unavailable (%s): starting kernel %s cold (~0.5 s)",
                        exc, self.kernel_id)  # fmt: skip
            return await super().launch_kernel(cmd, **kwargs)
        try:
            if cgroup is not None:
                if early is not None and early[0] == process.pid:
                    await early[1]
                else:
                    await asyncio.to_thread(_ensure_in_cgroup, process.pid, cgroup)
        except BaseException:
            process.kill()
            process.close()
            raise
        self.process = self._forked = process
        self.pid = self.pgid = process.pid  # the child called setsid()
        self.cwd = kwargs.get("cwd")
        if self._watchdog_cap is not None:
            self._watchdog = ProcessWatchdog(process.pid, self._watchdog_cap)
            self._watchdog.start()
        return self.connection_info

    def _request(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        config = self.config_model
        km = self.parent
        env = dict(kwargs.get("env") or os.environ)
        request: dict[str, Any] = {
            "connection_file": os.path.abspath(km.connection_file),
            "cwd": kwargs.get("cwd"),
            "env": env,
            "rlimits": {},
            "cgroup_procs": [str(p) for p in _procs_files(self._cgroup)],
            "drop_capabilities": config.level != "none",
        }
        if config.level != "none":  # the same limits as limit_args() gives prlimit
            limits = {"CORE": 0}
            if config.memory_mb is not None:
                limits["AS"] = config.memory_mb * _MIB
            if config.cpu_s is not None:
                limits["CPU"] = config.cpu_s
            if config.file_size_mb is not None:
                limits["FSIZE"] = config.file_size_mb * _MIB
            if config.open_files is not None:
                limits["NOFILE"] = config.open_files
            request["rlimits"] = {name: [value, value] for name, value in limits.items()}
        if config.level == "limits":
            request["landlock"] = self._landlock_rules
        elif config.level == "bwrap":
            request["namespaces"] = self._namespaces(config, kwargs)
            # The cgroup file system is not in the sandbox: the host moves the kernel.
            request["cgroup_procs"] = []
            # A move takes a grace period of RCU (about 15 ms, waiting): the kernel says its
            # pid as it starts, and the host moves it while it builds its sockets.
            request["announce"] = True
            env.update(HOME="/tmp", TMPDIR="/tmp")
        return request

    def _namespaces(self, config: SandboxConfig, kwargs: dict[str, Any]) -> dict[str, Any]:
        """What a forked bwrap kernel binds of its own (see :mod:`.namespaces`): the same host
        paths :func:`~kernelenv.sandbox.bwrap.bwrap_args` binds for a cold one."""
        km = self.parent
        root = Path(self.template_root)
        cwd = Path(kwargs.get("cwd") or os.getcwd()).absolute()
        run_dir = Path(km.connection_file).absolute().parent
        fs = EpisodeFS.at(cwd)
        # The budget first: the socket folder is in it (a later bind covers an earlier one).
        rw = [*([fs.root] if fs is not None else []), run_dir, cwd]
        outside = [str(p) for p in rw if not p.is_relative_to(root)]
        if not self.template_root or outside:
            raise TemplateUnavailable(0, f"{outside} not in the template's view ({root})")
        return {
            "hide": str(root),
            "rw": [str(p) for p in rw],
            "ro": [os.path.abspath(km.connection_file)],
            "tmp": str(fs.tmp) if fs is not None else None,
            "shm": str(fs.shm) if fs is not None else None,
            "tmp_bytes": config.tmp_size_mb * _MIB,
            "shm_bytes": config.shm_size_mb * _MIB,
            "network": config.allow_network,
        }

    async def cleanup(self, restart: bool = False) -> None:
        """Release the kernel's resources, and the lease on it."""
        forked, self._forked = self._forked, None
        try:
            await super().cleanup(restart=restart)
        finally:
            if forked is not None:
                forked.close()


def _procs_files(cgroup: "PidsCgroup | None") -> list[Path]:
    """The ``cgroup.procs`` files a kernel joins (one per controller hierarchy)."""
    if cgroup is None:
        return []
    return list(getattr(cgroup, "procs_files", None) or [cgroup.procs_file])


def _ensure_in_cgroup(pid: int, cgroup: "PidsCgroup") -> None:
    """Make sure the kernel is in its cgroups before it gets a request (it joined first thing
    after the fork; where it could not, the host moves it now)."""
    for procs in _procs_files(cgroup):
        if str(pid) in procs.read_text().split():
            continue
        procs.write_text(str(pid))
        if str(pid) not in procs.read_text().split():
            raise OSError(f"kernel {pid} is not in its cgroup ({procs})")


def ensure_registered() -> None:
    """Make the provisioner known to jupyter_client even where the package's entry point is
    not installed (a source checkout whose metadata predates it)."""
    from importlib.metadata import EntryPoint

    from jupyter_client.provisioning.factory import KernelProvisionerFactory

    factory = KernelProvisionerFactory.instance()
    if TEMPLATE_PROVISIONER_NAME not in factory.provisioners:
        factory.provisioners[TEMPLATE_PROVISIONER_NAME] = EntryPoint(
            TEMPLATE_PROVISIONER_NAME,
            f"{__name__}:{TemplateProvisioner.__name__}",
            "jupyter_client.kernel_provisioners",
        )
