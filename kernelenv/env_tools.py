"""The tools an agent can call on an episode over MCP: name, description, input schema, handler.

One table serves the server's ``POST /mcp`` and WebSocket ``mcp`` frames and the stdio MCP
server. Add a tool by appending an :class:`EnvTool` to :data:`TOOLS`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .env import KernelEnv
from .models import CodeObservation, parse_action

ToolHandler = Callable[[KernelEnv, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class EnvTool:
    """One tool of the table.

    Attributes:
        name: The MCP tool name.
        description: What the tool does, shown to the model.
        input_schema: JSON Schema of the tool's arguments.
        handler: ``async (env, arguments) -> result dict``, run on the session's env.
        starts_episode: True when the tool needs no live episode (it starts one); a
            stateless transport may then give it a fresh env.
    """

    name: str
    description: str
    input_schema: dict[str, Any]
    handler: ToolHandler
    starts_episode: bool = False


def observation_summary(observation: CodeObservation) -> str:
    """A short text of a step's result, for models that read only the text content."""
    parts = [f"status: {observation.status.value} (exit code {observation.exit_code})"]
    if observation.stdout:
        parts.append(f"stdout:\n{observation.stdout.rstrip()}")
    if observation.stderr:
        parts.append(f"stderr:\n{observation.stderr.rstrip()}")
    if observation.return_value is not None:
        parts.append(f"result: {observation.return_value}")
    return "\n".join(parts)


async def _run_code(env: KernelEnv, arguments: dict[str, Any]) -> dict[str, Any]:
    action = parse_action({k: v for k, v in arguments.items() if k != "episode_id"})
    observation = await env.step(action)
    return observation.model_dump(mode="json")


async def _reset(env: KernelEnv, arguments: dict[str, Any]) -> dict[str, Any]:
    options = dict(arguments)
    seed = options.pop("seed", None)
    episode_id = options.pop("episode_id", None)
    observation = await env.reset(seed=seed, episode_id=episode_id, **options)
    return {"episode_id": env.state.episode_id, **observation.model_dump(mode="json")}


async def _get_state(env: KernelEnv, arguments: dict[str, Any]) -> dict[str, Any]:
    return env.state.model_dump(mode="json")


TOOLS: list[EnvTool] = [
    EnvTool(
        name="run_code",
        description="Run Python code in the episode's persistent IPython kernel (variables and "
        "imports persist between calls) and return stdout, stderr, the last expression's value "
        "and any error.",
        input_schema={
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "Python source to run."},
                "timeout_s": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "Wall-clock budget in seconds (default: the server's).",
                },
            },
            "required": ["code"],
        },
        handler=_run_code,
    ),
    EnvTool(
        name="reset",
        description="Start a new episode on a fresh kernel (all variables are lost).",
        input_schema={
            "type": "object",
            "properties": {
                "seed": {"type": "integer", "description": "Seed for random generators."},
                "episode_id": {"type": "string", "description": "Id of the new episode."},
            },
        },
        handler=_reset,
        starts_episode=True,
    ),
    EnvTool(
        name="get_state",
        description="The episode's state: episode_id, step_count, last_exit_code.",
        input_schema={"type": "object", "properties": {}},
        handler=_get_state,
    ),
]


def find_tool(name: str) -> EnvTool | None:
    """The tool called ``name`` in :data:`TOOLS`, or None."""
    return next((tool for tool in TOOLS if tool.name == name), None)
