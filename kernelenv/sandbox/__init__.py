"""Containment of kernels: levels and limits (config), the kernelspec, the provisioner that
launches kernels contained, a pids cgroup per kernel, and the watchdog where no cgroup can be made."""

from ..errors import SandboxUnavailableError
from .config import SANDBOX_LEVELS, SandboxConfig, SandboxFallbackWarning, SandboxLevel

__all__ = [
    "SANDBOX_LEVELS",
    "SandboxConfig",
    "SandboxFallbackWarning",
    "SandboxLevel",
    "SandboxUnavailableError",
]
