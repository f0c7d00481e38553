"""Ready-made environments, named as EnvTorch names them (`create_codeact_env`, ...)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..env import KernelEnv
from ..sync import SyncKernelEnv
from .transforms import (
    CodeQualityTransform,
    CodeSafetyTransform,
    CompositeTransform,
    MathProblemTransform,
)

if TYPE_CHECKING:
    from ..tools.mcp import MCPServer
    from ..tools.registry import ToolRegistry


def create_codeact_env(**env_options: Any) -> SyncKernelEnv:
    """A ready, blocking CodeAct environment (``env.reset()``, ``env.step(action)``).

    Its first episode is already started, so ``env.step(...)`` works at once (EnvTorch's RL
    example steps without a reset); ``env.reset()`` starts a new one whenever wanted.

    Args:
        **env_options: Passed to :class:`~kernelenv.KernelEnv`.
    """
    return _started(KernelEnv(**_with_spare_kernel(env_options)))


def _with_spare_kernel(env_options: dict[str, Any]) -> dict[str, Any]:
    # Two ready kernels: the episode started here takes one, a first reset() the other.
    if "pool" not in env_options:
        env_options.setdefault("pool_size", 2)
    return env_options


def _started(env: KernelEnv) -> SyncKernelEnv:
    facade = env.sync()
    try:
        facade.reset()
    except BaseException:
        facade.close()
        raise
    return facade


def create_math_env_transform(expected_answer: object) -> CompositeTransform:
    """Rewards for a math problem: 1.0 for the right answer, plus quality bonuses, minus unsafe code.

    Args:
        expected_answer: The correct answer (see :class:`~kernelenv.MathProblemTransform`).
    """
    return CompositeTransform(
        [CodeSafetyTransform(), MathProblemTransform(expected_answer), CodeQualityTransform()]
    )


def create_safe_env_transform() -> CompositeTransform:
    """Rewards for safe, clean code: a penalty for unsafe patterns plus quality bonuses."""
    return CompositeTransform([CodeSafetyTransform(), CodeQualityTransform()])


def create_mcp_environment(
    *,
    mcp_servers: Iterable[MCPServer] = (),
    tools: ToolRegistry | None = None,
    **env_options: Any,
) -> SyncKernelEnv:
    """A blocking environment whose agent code can call tools: ``file_write``/``file_read``/
    ``file_list`` on the episode's own host directory, and the tools of ``mcp_servers``.

    Args:
        mcp_servers: MCP servers whose tools agent code may call
            (see :class:`~kernelenv.MCPServer`).
        tools: A registry to start from (default: an empty one); the file tools are added.
        **env_options: Passed to :class:`~kernelenv.KernelEnv`.
    """
    from ..tools.files import add_file_tools
    from ..tools.registry import ToolRegistry

    registry = add_file_tools(tools if tools is not None else ToolRegistry())
    for server in mcp_servers:
        registry.add_mcp_server(server)
    return _started(KernelEnv(tools=registry, **_with_spare_kernel(env_options)))
