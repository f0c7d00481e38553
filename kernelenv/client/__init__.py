"""The client side: ``CodingEnv`` over OpenEnv's WebSocket protocol, and the launchers that
start a server for it."""

from .coding_env import CodingEnv, StepResult, SyncCodingEnv
from .launchers import DockerLauncher, Launcher, LocalServerLauncher

__all__ = [
    "CodingEnv",
    "DockerLauncher",
    "Launcher",
    "LocalServerLauncher",
    "StepResult",
    "SyncCodingEnv",
]
