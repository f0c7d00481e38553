"""kernelenv: a Jupyter-kernel-backed code-execution environment for LLM agents and RL.

The public API is what ``__all__`` lists. Names are loaded on first use so that importing
kernelenv (and its command line) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "CodeAction": "models",
    "CodeObservation": "models",
    "CodeState": "models",
    "ErrorInfo": "models",
    "ExecutionResult": "models",
    "StepStatus": "models",
    "ReviewAction": "models",
    "Grade": "grading",
    "Task": "task_format",
    "TaskLibrary": "task_library",
    "KernelEnv": "env",
    "SyncKernelEnv": "sync",
    "KernelPool": "pool",
    "SandboxConfig": "sandbox",
    "SandboxFallbackWarning": "sandbox",
    "SandboxUnavailableError": "errors",
    "create_codeact_env": "factories",
    "create_math_env_transform": "factories",
    "create_safe_env_transform": "factories",
    "create_mcp_environment": "factories",
    "Transform": "transforms",
    "CompositeTransform": "transforms",
    "CodeSafetyTransform": "transforms",
    "MathProblemTransform": "transforms",
    "CodeQualityTransform": "transforms",
    "ToolRegistry": "tools",
    "Tool": "tools",
    "ToolContext": "tools",
    "ToolCall": "tools",
    "ToolError": "tools",
    "MCPServer": "mcp_client",
    "MCPConnectionError": "errors",
    "ToolSetupError": "errors",
    "Journal": "journal",
    "Trajectory": "replay",
    "replay_trajectory": "replay",
    "replay_notebook": "replay",
    "KernelEnvError": "errors",
    "KernelStartError": "errors",
    "KernelCommunicationError": "errors",
    "ResetNeeded": "errors",
    "EnvClosedError": "errors",
    "PoolExhaustedError": "errors",
    "InvalidActionError": "errors",
    "UnknownTaskError": "errors",
    "TaskFormatError": "errors",
    "UnknownEpisodeError": "errors",
    "ServerError": "errors",
    "ServerStartError": "errors",
    "CodingEnv": "client",
    "SyncCodingEnv": "client",
    "StepResult": "client",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kernelenv' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
