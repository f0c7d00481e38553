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
import subprocess
import uuid
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Dict, List, Unicode

from .bwrap import bwrap_args, interpreter_layout
from .cgroup import JOIN_CGROUPS, EpisodeCgroup, cgroup_parent, memory_cgroup_parent
from .config import SandboxConfig, announce_fallback, limit_args, scrub_env
from .episode_fs import EpisodeFS
from .landlock import (
    landlock_abi,
    landlock_args,
    landlock_boot_code,
    landlock_rules,
    write_rules,
)
from .watchdog import ProcessWatchdog

log = logging.getLogger(__name__)

MiB = 1024 * 1024


class SandboxProvisioner(LocalProvisioner):  # type: ignore[misc]
    """A :class:`LocalProvisioner` that wraps the kernel command in the configured containment."""

    sandbox = Dict(help="A SandboxConfig as a dict (its level already resolved).").tag(config=True)
    hidden_paths = List(
        Unicode(), help="Directories a bwrap kernel sees as empty (e.g. the pool's root)."
    ).tag(config=True)

    _cgroup: EpisodeCgroup | None = None
    _watchdog: ProcessWatchdog | None = None
    _watchdog_cap: int | None = None
    _level = "none"
    _landlock_rules: list[str] | None = None  # the limits level's, once pre_launch made them

    @property
    def pids_cgroup(self) -> EpisodeCgroup | None:
        """The kernel's cgroups while it runs, if they cap its processes (else None)."""
        cgroup = self._cgroup
        return cgroup if cgroup is not None and cgroup.pids_path is not None else None

    @property
    def cgroup(self) -> EpisodeCgroup | None:
        """The kernel's cgroups (pids and memory), while it runs (None without any)."""
        return self._cgroup

    def oom_killed(self) -> bool:
        """Whether the episode's memory limit has killed one of its processes."""
        return self._cgroup is not None and self._cgroup.oom_kills() > 0

    @property
    def config_model(self) -> SandboxConfig:
        """The sandbox settings of this kernel."""
        return SandboxConfig(**self.sandbox).resolved()

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Wrap the kernel command: cgroup join, resource limits, then bubblewrap or Landlock."""
        kwargs = await super().pre_launch(**kwargs)
        # At every level: the server's stdout and stderr (its terminal, its log) are no place
        # for a kernel to write fake log lines or terminal escapes into. Output reaches the
        # host through the Jupyter protocol alone.
        kwargs["stdout"] = kwargs["stderr"] = subprocess.DEVNULL
        config = self.config_model
        self._level = config.level
        if config.level == "none":
            return kwargs
        cmd: list[str] = list(kwargs["cmd"])
        kwargs["env"] = scrub_env(kwargs["env"], config.secret_env_patterns)
        # kernelenv's Kernel mounts the episode's byte budget around its working directory;
        # other callers (nbclient) get capped /tmp and /dev/shm only.
        fs = EpisodeFS.at(Path(kwargs.get("cwd") or os.getcwd()).absolute())
        if config.level == "bwrap":
            await asyncio.to_thread(interpreter_layout, cmd[0])  # asked once, off the loop
            cmd = self._bwrap_args(config, cmd, kwargs, fs) + cmd
        elif fs is not None:
            # Temporary and config files inside the budget (HOME may be unwritable).
            for name, value in (("TMPDIR", ""), ("HOME", ""), ("IPYTHONDIR", ".ipython"),
                                ("MPLCONFIGDIR", ".config/matplotlib")):  # fmt: skip
                kwargs["env"][name] = str(fs.tmp / value) if value else str(fs.tmp)
            if config.landlock and _landlock_abi() >= 1:
                # Off the loop: the first call per process expands the allow-list's holes.
                cmd = await asyncio.to_thread(self._landlocked, config, cmd, fs)
        if config.level == "limits" and config.landlock and (fs is None or _landlock_abi() < 1):
            _warn_no_landlock("no episode byte budget" if fs is None else "no Landlock here")
        cmd = limit_args(config) + cmd
        await self._release_cgroup()
        pids_parent = cgroup_parent() if config.max_processes is not None else None
        memory_parent = memory_cgroup_parent() if config.episode_memory_mb is not None else None
        if config.max_processes is not None and pids_parent is None:
            _warn_no_cgroup()
            self._watchdog_cap = config.max_processes
        if config.episode_memory_mb is not None and memory_parent is None:
            _warn_no_memory_cgroup()
        if pids_parent is not None or memory_parent is not None:
            self._cgroup = EpisodeCgroup(
                self.kernel_id or uuid.uuid4().hex,
                max_processes=config.max_processes,
                memory_bytes=(config.episode_memory_mb or 0) * MiB or None,
                pids_parent=pids_parent,
                memory_parent=memory_parent,
            )
            procs = [str(p) for p in self._cgroup.procs_files]
            cmd = ["sh", "-c", JOIN_CGROUPS, "join-cgroups", *procs, "--", *cmd]
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
        self, config: SandboxConfig, cmd: list[str], kwargs: dict[str, Any], fs: EpisodeFS | None
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
        # Matplotlib and IPython want writable config directories; the home is /tmp.
        kwargs["env"].setdefault("MPLCONFIGDIR", "/tmp/.config/matplotlib")
        kwargs["env"].setdefault("IPYTHONDIR", "/tmp/.ipython")
        return bwrap_args(
            cmd[0],
            work=cwd,
            # The connection file's folder: the IPC sockets may be abstract (no folder).
            run_dir=Path(km.connection_file).absolute().parent if km.transport == "ipc" else None,
            # The connection file alone, read-only: its folder may be Jupyter's shared
            # runtime directory, with other kernels' keys in it.
            connection_file=Path(km.connection_file).absolute(),
            episode_root=fs.root if fs is not None else None,
            episode_tmp=fs.tmp if fs is not None else None,
            episode_shm=fs.shm if fs is not None else None,
            tmp_bytes=config.tmp_size_mb * MiB,
            shm_bytes=config.shm_size_mb * MiB,
            allow_network=config.allow_network,
            hidden=self.hidden_paths,
            extra_readable=config.extra_readable,
        )

    def _landlocked(self, config: SandboxConfig, cmd: list[str], fs: EpisodeFS) -> list[str]:
        km = self.parent
        run_dir = (
            Path(km.connection_file).absolute().parent
            if km is not None and km.transport == "ipc"
            else None
        )
        writable = [str(fs.root)]
        if run_dir is not None:
            writable.append(str(run_dir))
        elif km is not None:  # tcp: the connection file alone
            writable.append(str(Path(km.connection_file).absolute()))
        rules = landlock_rules(
            cmd[0],
            writable=writable,
            hidden=list(self.hidden_paths),
            extra_readable=list(config.extra_readable),
        )
        self._landlock_rules = rules
        if run_dir is not None and len(cmd) > 2 and cmd[1] == "-c":
            # A Python boot command (kernelenv's kernelspec): the kernel restricts itself
            # first thing, which saves the wrapper's interpreter start (tens of ms).
            rules_file = run_dir / "landlock.rules"
            write_rules(rules, rules_file)
            return [cmd[0], "-c", landlock_boot_code(str(rules_file)) + cmd[2], *cmd[3:]]
        return landlock_args(rules) + cmd

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
def _landlock_abi() -> int:
    return landlock_abi()


@functools.cache
def _warn_no_landlock(why: str) -> None:
    log.warning(
        "level limits without Landlock (%s): kernels can read every file the server's user "
        "can, other pools' connection files included",
        why,
    )


@functools.cache
def _warn_no_memory_cgroup() -> None:
    # Logged, not a warning category: without a memory cgroup the per-process RLIMIT_AS
    # (memory_mb) still applies, as it always has.
    log.warning(
        "no writable memory cgroup here: an episode's memory is bounded only per process "
        "(memory_mb, RLIMIT_AS), not as a whole"
    )


@functools.cache
def _warn_no_cgroup() -> None:
    message = (
        "no writable pids cgroup on this machine: the process count of kernels is enforced "
        "only by a watchdog polling each kernel's process tree (RLIMIT_NPROC does not apply "
        "to root), which a fast fork bomb can overshoot"
    )
    announce_fallback(message)
