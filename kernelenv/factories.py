"""Ready-made environments, as seed 004 names them."""

from __future__ import annotations

from typing import Any

from .env import KernelEnv
from .sync import SyncKernelEnv


def create_codeact_env(**env_options: Any) -> SyncKernelEnv:
    """A ready, blocking CodeAct environment (``env.reset()``, ``env.step(action)``).

    Args:
        **env_options: Passed to :class:`~kernelenv.KernelEnv`.
    """
    return KernelEnv(**env_options).sync()
