"""Containment levels for kernels: settings, availability checks and the launch command wrapper.

Levels, weakest to strongest:

- ``none``: the kernel runs as a plain child process.
- ``limits``: resource limits (``prlimit``: address space, CPU time, file size, open files),
  a pids cgroup capping the process count, capabilities dropped (``setpriv``), secrets
  scrubbed from the environment, the episode's own working directory.
- ``bwrap``: the limits, plus bubblewrap namespaces: no network, a read-only root apart from
  the episode's directories and a private ``/tmp``, its own PID namespace (no process outlives
  the episode) and death with its parent.

The default, ``auto``, is the strongest level this machine supports; a fallback is announced
with a logged warning and a :class:`SandboxFallbackWarning`.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from ..errors import SandboxUnavailableError

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
    tmp_size_mb: int = Field(
        256, gt=0, description="Size of the private /tmp of a bwrap kernel (a tmpfs), in MiB."
    )
    allow_network: bool = Field(
        False, description="Keep the host network in a bwrap kernel (no network by default)."
    )
    secret_env_patterns: tuple[str, ...] = Field(
        DEFAULT_SECRET_PATTERNS,
        description="Shell-style patterns (case-insensitive) of environment variable names "
        "removed from a contained kernel's environment.",
    )

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


def as_sandbox_config(value: SandboxConfig | str | None) -> SandboxConfig:
    """A :class:`SandboxConfig` from a config, a level name, or None (the default config)."""
    if value is None:
        return SandboxConfig()
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

BWRAP_PROBE = (
    "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
    "--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
)  # fmt: skip


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot be used here, or None if a trial sandbox ran."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap is not on PATH"
    for tool in ("prlimit", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not on PATH"
    try:
        result = subprocess.run(
            [bwrap, *BWRAP_PROBE, "true"], capture_output=True, text=True, timeout=10, check=False
        )
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
    upper = [p.upper() for p in patterns]
    return {
        name: value
        for name, value in env.items()
        if not any(fnmatch.fnmatchcase(name.upper(), p) for p in upper)
    }


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
    if config.file_size_mb is not None:
        args.append(f"--fsize={config.file_size_mb * mib}")
    if config.open_files is not None:
        args.append(f"--nofile={config.open_files}")
    args.append("--")
    if config.level == "limits":
        args += ["setpriv", "--no-new-privs"]
        if os.geteuid() == 0:  # only root has capabilities to drop (and may drop them)
            args += ["--bounding-set=-all", "--inh-caps=-all"]
        args.append("--")
    return args


def bwrap_args(
    config: SandboxConfig,
    *,
    writable: Sequence[str | Path],
    hidden: Sequence[str | Path] = (),
    readable: Sequence[str | Path] = (),
    system: Sequence[str | Path] = (),
    cwd: str | Path | None = None,
) -> list[str]:
    """The ``bwrap`` command line in front of a kernel command.

    Later mounts cover earlier ones, so the order is: the private /tmp, ``system``, ``hidden``,
    ``readable``, ``writable``.

    Args:
        config: Sandbox settings (network, /tmp size).
        writable: Directories bound read-write (the episode's working and socket directories).
        hidden: Directories replaced by an empty tmpfs (e.g. the pool's root, so an episode
            cannot see its neighbours', and the task library inside a checkout).
        readable: Paths bound read-only over what ``hidden`` hides (the connection file).
        system: Paths bound read-only over the private /tmp before anything is hidden: what
            the interpreter needs that lives under /tmp (a virtual environment, a checkout).
        cwd: The kernel's working directory inside the sandbox.
    """
    args = [
        "bwrap",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--size", str(config.tmp_size_mb * 1024 * 1024), "--tmpfs", "/tmp",
    ]  # fmt: skip
    for path in system:
        args += ["--ro-bind", str(path), str(path)]
    for path in hidden:
        args += ["--tmpfs", str(path)]
    for path in readable:
        args += ["--ro-bind", str(path), str(path)]
    for path in writable:
        args += ["--bind", str(path), str(path)]
    if not config.allow_network:
        args.append("--unshare-net")
    args += [
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", "kernelenv",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        # ipykernel exits when JPY_PARENT_PID is not its parent, which a PID namespace
        # breaks; --die-with-parent does that job instead. PID 1 (bubblewrap's init, its
        # real parent) turns ipykernel's parent polling off without a console notice.
        "--setenv", "JPY_PARENT_PID", "1",
    ]  # fmt: skip
    if cwd is not None:
        args += ["--chdir", str(cwd)]
    return args + ["--"]


def paths_under_tmp(paths: Sequence[str | Path]) -> list[Path]:
    """Those of ``paths`` a private /tmp hides, reduced to the outermost ones."""
    found = set()
    for path in paths:
        for form in (Path(path).absolute(), Path(path).resolve()):
            if form.is_relative_to("/tmp") and form.exists():
                found.add(form)
    outer: list[Path] = []
    for path in sorted(found):
        if not any(path.is_relative_to(o) for o in outer):
            outer.append(path)
    return outer


def interpreter_paths(python: str) -> list[Path]:
    """Directories a kernel interpreter needs to read: its venv, its base installation, and
    the folder kernelenv is imported from (a source checkout, for an editable install)."""
    exe = Path(python)
    paths = [exe.parent.parent, exe.resolve().parent.parent, Path(sys.prefix)]
    paths.append(Path(sys.base_prefix))
    paths.append(Path(__file__).resolve().parents[2])  # graders import kernelenv
    return paths
