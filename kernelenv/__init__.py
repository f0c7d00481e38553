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
    "OutputEvent": "models",
    "ReviewAction": "models",
    "Grade": "tasks.grading",
    "Task": "tasks.format",
    "TaskLibrary": "tasks.library",
    "KernelEnv": "env",
    "SyncKernelEnv": "sync",
    "KernelPool": "runtime.pool",
    "SandboxConfig": "sandbox.config",
    "SandboxFallbackWarning": "sandbox.config",
    "SandboxUnavailableError": "errors",
    "create_codeact_env": "integrations.factories",
    "create_math_env_transform": "integrations.factories",
    "create_safe_env_transform": "integrations.factories",
    "create_mcp_environment": "integrations.factories",
    "Transform": "integrations.transforms",
    "CompositeTransform": "integrations.transforms",
    "CodeSafetyTransform": "integrations.transforms",
    "MathProblemTransform": "integrations.transforms",
    "CodeQualityTransform": "integrations.transforms",
    "ToolRegistry": "tools.registry",
    "Tool": "tools.registry",
    "ToolContext": "tools.registry",
    "ToolCall": "tools.registry",
    "ToolError": "errors",
    "MCPServer": "tools.registry",
    "MCPConnectionError": "errors",
    "ToolSetupError": "errors",
    "Journal": "episodes.journal",
    "JournalError": "errors",
    "Trajectory": "episodes.replay",
    "replay_trajectory": "episodes.replay",
    "replay_notebook": "episodes.replay",
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
    "CodingEnv": "client.coding_env",
    "SyncCodingEnv": "client.coding_env",
    "StepResult": "client.coding_env",
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
