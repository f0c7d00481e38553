"""Containment levels for kernels: settings, availability checks and the launch command wrapper.

Levels, weakest to strongest:

- ``none``: the kernel runs as a plain child process.
- ``limits``: resource limits (``prlimit``: address space, CPU time, file size, open files),
  a pids cgroup capping the process count and a memory cgroup capping the episode's memory,
  capabilities dropped (``setpriv``), secrets scrubbed from the environment, the episode's own
  working directory (a size-capped tmpfs where the server may mount one).
- ``bwrap``: the limits, plus bubblewrap namespaces: no network, a read-only root holding only
  what the interpreter needs (:mod:`kernelenv.sandbox.bwrap`), the episode's working
  directory, /tmp and /dev/shm in one byte budget, a minimal read-only /dev, its own PID
  namespace (no process outlives the episode) and death with its parent.

The default, ``auto``, is the strongest level this machine supports; a fallback is announced
with a logged warning and a :class:`SandboxFallbackWarning`.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import SandboxUnavailableError
from .bwrap import bwrap_args as _bwrap_argv

log = logging.getLogger(__name__)

SandboxLevel = Literal["auto", "bwrap", "limits", "none"]
# The level names, for command lines and settings (the one definition is the Literal above).
SANDBOX_LEVELS: tuple[str, ...] = get_args(SandboxLevel)

PROVISIONER_NAME = "kernelenv-sandbox"

DEFAULT_SECRET_PATTERNS = (
    "*_TOKEN",
    "*_TOKENS",
    "*_KEY",
    "*_KEYS",
    "*_SECRET",
    "*_SECRETS",
    "*PASSWORD*",
    "*PASSWD*",
    "*CREDENTIAL*",
    "*_API_KEY*",
    "AWS_*",
    "JPY_API_TOKEN",
    "JUPYTERHUB_*",
)


class SandboxFallbackWarning(RuntimeWarning):
    """The strongest containment level is not available here; a weaker one is used."""


class SandboxConfig(BaseModel):
    """How kernels are contained. Limits set to ``None`` are not applied."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: SandboxLevel = Field(
        "auto",
        description="Containment level: auto (strongest available), bwrap, limits or none.",
    )
    memory_mb: int | None = Field(
        2048,
        gt=0,
        description="Address-space limit per process (RLIMIT_AS), in MiB. JIT-heavy "
        "libraries reserve large address ranges: raise it or set None for them.",
    )
    cpu_s: int | None = Field(
        600, gt=0, description="CPU seconds a kernel process may use over its life (RLIMIT_CPU)."
    )
    file_size_mb: int | None = Field(
        1024, gt=0, description="Largest file a kernel may write (RLIMIT_FSIZE), in MiB."
    )
    open_files: int | None = Field(
        1024, gt=0, description="Open file descriptors per process (RLIMIT_NOFILE)."
    )
    max_processes: int | None = Field(
        256,
        gt=0,
        description="Processes and threads an episode may hold at once (a pids cgroup).",
    )
    episode_disk_mb: int | None = Field(
        1024,
        gt=0,
        description="Byte budget, in MiB, of everything an episode writes: its working "
        "directory, /tmp and /dev/shm share one size-capped tmpfs (mounted by the server when "
        "it is root; otherwise only /tmp and /dev/shm are capped, by tmp_size_mb and "
        "shm_size_mb). Counts against episode_memory_mb, so it must stay below it.",
    )
    episode_inodes: int = Field(
        65536, gt=0, description="Files and folders an episode may create in its byte budget."
    )
    episode_memory_mb: int | None = Field(
        2048,
        gt=0,
        description="Memory of a whole episode (every process, and its files in tmpfs), in "
        "MiB, through a memory cgroup where one is writable; past it the kernel is killed "
        "(status kernel_died).",
    )
    tmp_size_mb: int = Field(
        256,
        gt=0,
        description="Size of the private /tmp of a bwrap kernel (a tmpfs), in MiB, when no "
        "episode byte budget can be mounted.",
    )
    shm_size_mb: int = Field(
        64,
        gt=0,
        description="Size of the /dev/shm of a bwrap kernel, in MiB, when no episode byte "
        "budget can be mounted.",
    )
    extra_readable: tuple[str, ...] = Field(
        (),
        description="More host paths a bwrap kernel may read (data folders); the sandbox "
        "shows only what the interpreter needs otherwise.",
    )
    landlock: bool = Field(
        True,
        description="At level limits, confine a kernel's file access with Landlock (Linux "
        "5.13+) to what the interpreter needs and the episode's own files, and its signals to "
        "its own processes (needs the episode byte budget, so a root server).",
    )
    allow_network: bool = Field(
        False, description="Keep the host network in a bwrap kernel (no network by default)."
    )
    secret_env_patterns: tuple[str, ...] = Field(
        DEFAULT_SECRET_PATTERNS,
        description="Shell-style patterns (case-insensitive) of environment variable names "
        "removed from a contained kernel's environment.",
    )

    @model_validator(mode="after")
    def _budget_below_memory(self) -> SandboxConfig:
        # tmpfs pages count against the memory cgroup: a full budget at or over the memory
        # limit would end in an OOM kill instead of a clean ENOSPC.
        disk, memory = self.episode_disk_mb, self.episode_memory_mb
        if disk is not None and memory is not None and disk >= memory:
            raise ValueError(
                f"episode_disk_mb ({disk}) must be below episode_memory_mb ({memory}): files "
                "the episode writes count against its memory; raise the memory or lower the budget"
            )
        return self

    def resolved(self) -> SandboxConfig:
        """This config with ``auto`` replaced by the strongest level available (warns on fallback)."""
        if self.level == "auto":
            if bwrap_available():
                return self.model_copy(update={"level": "bwrap"})
            if limits_problem() is None:
                _announce_fallback(
                    f"bubblewrap is not usable on this machine ({bwrap_problem()}); kernels "
                    "run with resource limits only: no network, filesystem or PID isolation. "
                    "Install the 'bubblewrap' package to fix this."
                )
                return self.model_copy(update={"level": "limits"})
            _announce_fallback(
                f"neither bubblewrap nor resource limits are usable here ({limits_problem()}); "
                "kernels run UNCONTAINED. Install 'bubblewrap' and 'util-linux' to fix this."
            )
            return self.model_copy(update={"level": "none"})
        problem = {"bwrap": bwrap_problem, "limits": limits_problem}.get(self.level)
        if problem is not None and problem() is not None:
            raise SandboxUnavailableError(
                f"sandbox level {self.level!r} was asked for but is not usable here: {problem()}"
            )
        return self


SANDBOX_VARIABLE = "KERNELENV_SANDBOX"


def as_sandbox_config(value: SandboxConfig | str | None) -> SandboxConfig:
    """A :class:`SandboxConfig` from a config, a level name, or None: the default config, at
    the level ``$KERNELENV_SANDBOX`` names if set (as for ``kernelenv serve``), else auto."""
    if value is None:
        return SandboxConfig(level=os.environ.get(SANDBOX_VARIABLE) or "auto")
    if isinstance(value, SandboxConfig):
        return value
    if isinstance(value, str):
        return SandboxConfig(level=value)
    raise TypeError(f"sandbox must be a SandboxConfig, a level name or None, not {value!r}")


def _announce_fallback(message: str) -> None:
    announce_fallback(message, stacklevel=4)


def announce_fallback(message: str, *, stacklevel: int = 3) -> None:
    """Say once, loudly, that containment is weaker than asked: a warning, and a log record
    where logging is set up (a server). Not both on a bare script's stderr, where an
    unconfigured logger would print the same sentence a second time.
    """
    if log.hasHandlers():
        log.warning(message)
    warnings.warn(message, SandboxFallbackWarning, stacklevel=stacklevel)


# -- availability (checked once per process) -----------------------------------------------


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot be used here, or None if a trial sandbox ran."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap is not on PATH"
    for tool in ("prlimit", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not on PATH"
    # The real command line (allow-list, read-only root), so that a missing library shows
    # here and not as kernels that die at start.
    try:
        python = os.path.abspath(sys.executable)  # as kernels get it (see KernelPool)
        probe = [*_bwrap_argv(python, work="/tmp"), python, "-c", "pass"]
        probe[0] = bwrap
        result = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"a trial sandbox failed: {exc}"
    if result.returncode != 0:
        return f"a trial sandbox failed: {result.stderr.strip() or result.returncode}"
    return None


def bwrap_available() -> bool:
    """Whether kernels can run under bubblewrap here (a trial sandbox is run once)."""
    return bwrap_problem() is None


def limits_problem() -> str | None:
    """Why resource limits cannot be applied here, or None."""
    for tool in ("prlimit", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not on PATH"
    return None


# -- the launch command ----------------------------------------------------------------------


def scrub_env(env: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    """``env`` without the variables whose names match one of ``patterns`` (case-insensitive)."""
    secret = _secret_name_pattern(tuple(patterns))
    return {name: value for name, value in env.items() if not secret.match(name.upper())}


@functools.cache
def _secret_name_pattern(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regular expression for all of ``patterns`` (a kernel start scrubs ~50 variables)."""
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(fnmatch.translate(p.upper()) for p in patterns))


def limit_args(config: SandboxConfig) -> list[str]:
    """``prlimit`` (and at level ``limits``, ``setpriv``) in front of a command.

    Without capabilities the kernel cannot raise its hard limits again (root otherwise can).
    Under bwrap, bubblewrap drops them itself (it needs them to build the sandbox).
    """
    args = ["prlimit", "--core=0"]
    mib = 1024 * 1024
    if config.memory_mb is not None:
        args.append(f"--as={config.memory_mb * mib}")
    if config.cpu_s is not None:
        args.append(f"--cpu={config.cpu_s}")
    # RLIMIT_FSIZE caps one file; the episode's byte budget caps them all together.
    sizes = [s for s in (config.file_size_mb, config.episode_disk_mb) if s is not None]
    if sizes:
        args.append(f"--fsize={min(sizes) * mib}")
    if config.open_files is not None:
        args.append(f"--nofile={config.open_files}")
    args.append("--")
    if config.level == "limits":
        args += ["setpriv", "--no-new-privs"]
        if os.geteuid() == 0:  # only root has capabilities to drop (and may drop them)
            args += ["--bounding-set=-all", "--inh-caps=-all"]
        args.append("--")
    return args
