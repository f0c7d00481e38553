"""Containment of kernels: levels and limits (config), the bwrap allow-list (bwrap), Landlock
(landlock), the episode's byte budget (episode_fs), its pids and memory cgroups (cgroup), the
kernelspec, the provisioner that launches kernels contained, and the watchdog where no cgroup
can be made."""

from ..errors import SandboxUnavailableError
from .config import SANDBOX_LEVELS, SandboxConfig, SandboxFallbackWarning, SandboxLevel

__all__ = [
    "SANDBOX_LEVELS",
    "SandboxConfig",
    "SandboxFallbackWarning",
    "SandboxLevel",
    "SandboxUnavailableError",
]
