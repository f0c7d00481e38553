"""SandboxProvisioner: jupyter_client's kernel-provisioner seam, launching kernels contained.

A kernelspec selects it with ``metadata.kernel_provisioner = {"provisioner_name":
"kernelenv-sandbox", "config": {"sandbox": {...}}}`` (see :func:`kernelenv.sandbox.kernelspec.kernel_spec`),
so every tool that starts a kernel from that spec (episodes, grading, replay, nbclient) gets
the same containment.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import uuid
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Dict, List, Unicode

from .cgroup import PidsCgroup, cgroup_parent
from .config import (
    SandboxConfig,
    announce_fallback,
    bwrap_args,
    interpreter_paths,
    limit_args,
    paths_under_tmp,
    scrub_env,
)
from .watchdog import ProcessWatchdog

log = logging.getLogger(__name__)

# Joins the pids cgroup named by $0, then becomes the real command: the cgroup is entered
# before anything can fork, so every descendant is counted and can be found.
JOIN_CGROUP = 'echo $$ > "$0" && exec "$@"'


class SandboxProvisioner(LocalProvisioner):  # type: ignore[misc]
    """A :class:`LocalProvisioner` that wraps the kernel command in the configured containment."""

    sandbox = Dict(help="A SandboxConfig as a dict (its level already resolved).").tag(config=True)
    hidden_paths = List(
        Unicode(), help="Directories a bwrap kernel sees as empty (e.g. the pool's root)."
    ).tag(config=True)

    _cgroup: PidsCgroup | None = None
    _watchdog: ProcessWatchdog | None = None
    _watchdog_cap: int | None = None
    _level = "none"

    @property
    def pids_cgroup(self) -> PidsCgroup | None:
        """The kernel's pids cgroup, while it runs (None without one)."""
        return self._cgroup

    @property
    def config_model(self) -> SandboxConfig:
        """The sandbox settings of this kernel."""
        return SandboxConfig(**self.sandbox).resolved()

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Wrap the kernel command: cgroup join, resource limits, then bubblewrap."""
        kwargs = await super().pre_launch(**kwargs)
        config = self.config_model
        self._level = config.level
        if config.level == "none":
            return kwargs
        cmd: list[str] = list(kwargs["cmd"])
        kwargs["env"] = scrub_env(kwargs["env"], config.secret_env_patterns)
        if config.level == "bwrap":
            cmd = self._bwrap_args(config, cmd, kwargs) + cmd
        cmd = limit_args(config) + cmd
        if config.max_processes is not None:
            if cgroup_parent() is not None:
                await self._release_cgroup()
                self._cgroup = PidsCgroup(self.kernel_id or uuid.uuid4().hex, config.max_processes)
                cmd = ["sh", "-c", JOIN_CGROUP, str(self._cgroup.procs_file)] + cmd
            else:
                _warn_no_cgroup()
                self._watchdog_cap = config.max_processes
        kwargs["cmd"] = cmd
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        """Launch the wrapped command; without a cgroup, start the process-count watchdog."""
        info = await super().launch_kernel(cmd, **kwargs)
        if self._watchdog_cap is not None and self.pid:
            self._watchdog = ProcessWatchdog(self.pid, self._watchdog_cap)
            self._watchdog.start()
        return info

    def _bwrap_args(
        self, config: SandboxConfig, cmd: list[str], kwargs: dict[str, Any]
    ) -> list[str]:
        km = self.parent
        if km is None:
            raise RuntimeError("the bwrap sandbox needs a kernel manager (for the socket paths)")
        if km.transport != "ipc" and not config.allow_network:
            raise RuntimeError(
                "a bwrap kernel has no network, so it needs transport='ipc' "
                f"(this kernel manager uses {km.transport!r})"
            )
        cwd = Path(kwargs.get("cwd") or os.getcwd()).absolute()
        writable = {cwd}
        if km.transport == "ipc":
            writable.add(Path(km.ip).absolute().parent)
        # The connection file alone, read-only: its folder may be Jupyter's shared runtime
        # directory, with other kernels' keys in it.
        readable = [Path(km.connection_file).absolute()]
        # Matplotlib and IPython want writable config directories; the home is read-only.
        kwargs["env"].setdefault("MPLCONFIGDIR", "/tmp/.config/matplotlib")
        kwargs["env"].setdefault("IPYTHONDIR", "/tmp/.ipython")
        return bwrap_args(
            config,
            writable=sorted(writable),
            hidden=self.hidden_paths,
            readable=readable,
            system=paths_under_tmp(interpreter_paths(cmd[0])),
            cwd=cwd,
        )

    async def send_signal(self, signum: int) -> None:
        """Signal the kernel; SIGKILL also reaches every process of its cgroup."""
        try:
            await super().send_signal(signum)
        finally:
            if signum == signal.SIGKILL and self._cgroup is not None:
                # One pass, so a step that kills its kernel returns at once; cleanup()
                # repeats it until the group is empty.
                self._cgroup.kill_all(rounds=1)

    def translate_exit_code(self, code: int | None) -> int | None:
        """The kernel's exit code as Popen reports it (bubblewrap reports signal N as 128+N)."""
        if self._level == "bwrap" and code is not None and 128 < code < 128 + 65:
            return -(code - 128)
        return code

    async def cleanup(self, restart: bool = False) -> None:
        """Release the kernel's resources: kill what is left of its processes, drop its cgroup."""
        await super().cleanup(restart=restart)
        await self._release_cgroup()
        if self._watchdog is not None:
            await self._watchdog.stop()
            self._watchdog = None

    def kill_now(self) -> None:
        """Kill the kernel and every process it started, without an event loop (at exit)."""
        pid = self.pid
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        if self._cgroup is not None:
            self._cgroup.remove(timeout_s=1.0)

    async def _release_cgroup(self) -> None:
        cgroup, self._cgroup = self._cgroup, None
        if cgroup is not None:
            await asyncio.to_thread(cgroup.remove)


@functools.cache
def _warn_no_cgroup() -> None:
    message = (
        "no writable pids cgroup on this machine: the process count of kernels is enforced "
        "only by a watchdog polling each kernel's process tree (RLIMIT_NPROC does not apply "
        "to root), which a fast fork bomb can overshoot"
    )
    announce_fallback(message)
