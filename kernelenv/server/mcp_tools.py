"""The tools an agent can call on an episode over MCP: name, description, input schema, handler.

One table serves the server's ``POST /mcp`` and WebSocket ``mcp`` frames and the stdio MCP
server. Add a tool by appending an :class:`EnvTool` to :data:`TOOLS`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..env import KernelEnv
from ..models import CodeObservation, ReviewAction, observation_summary, parse_action
from ..tasks.library import TaskLibrary, default_library

# The env is None for a tool that needs no episode, called without one.
ToolHandler = Callable[[KernelEnv | None, dict[str, Any]], Awaitable[dict[str, Any]]]


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
        needs_episode: False when the tool can answer without any episode (its handler then
            gets ``env=None`` where no episode is named).
        library_handler: How such a tool answers without an episode on a server with a task
            library of its own: ``(library, arguments) -> result dict``.
        server_only: True when its result only makes sense on a server (episodes addressed by
            id); the stdio MCP server, which runs one episode, does not offer it.
    """

    name: str
    description: str
    input_schema: dict[str, Any]
    handler: ToolHandler
    starts_episode: bool = False
    needs_episode: bool = True
    library_handler: Callable[[TaskLibrary, dict[str, Any]], dict[str, Any]] | None = None
    server_only: bool = False


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


async def _fork(env: KernelEnv, arguments: dict[str, Any]) -> dict[str, Any]:
    children = await env.fork(int(arguments.get("n", 1)))
    return {"episode_ids": [child.state.episode_id for child in children]}


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
                "keep": {
                    "type": "boolean",
                    "default": True,
                    "description": "false: run the code in a throwaway fork of the episode's "
                    "kernel; the episode's variables, files and step count stay as they were "
                    "(try something before committing to it).",
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
                "task_id": {
                    "type": "string",
                    "description": "Start a graded task (ids from list_tasks).",
                },
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
    EnvTool(
        name="fork",
        description="Branch the episode: n new episodes, each holding its variables, imports and "
        "files right now, steppable by the episode_id returned (pass it to run_code). This "
        "episode goes on unchanged.",
        input_schema={
            "type": "object",
            "properties": {
                "n": {"type": "integer", "minimum": 1, "maximum": 16,
                      "description": "How many children (default 1)."},
            },
        },
        handler=_fork,
        server_only=True,
    ),
]



# -- tasks, submission and export (kernelenv mcp and POST /mcp alike) ------------------------


async def _list_tasks(env: KernelEnv | None, arguments: dict[str, Any]) -> dict[str, Any]:
    return list_tasks_of((env.task_library if env is not None else None) or default_library())


def list_tasks_of(library: TaskLibrary, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``list_tasks`` result for a library (what ``POST /mcp`` answers without an episode)."""
    return {"tasks": [summary.model_dump(mode="json") for summary in library.summaries()]}


async def _submit(env: KernelEnv, arguments: dict[str, Any]) -> dict[str, Any]:
    review = {k: v for k, v in arguments.items() if k != "episode_id"}
    task = env.episode.task.task if env.episode and env.episode.task else None
    if task is not None and task.uses_review_actions:
        observation = await env.step(ReviewAction.model_validate(review))
        return observation.model_dump(mode="json")
    if review:
        raise ValueError(
            "review fields are only for pr_review tasks; on a code task call submit with no "
            "arguments once the code is written"
        )
    return (await env.grade()).model_dump(mode="json")


async def _export_episode(env: KernelEnv, arguments: dict[str, Any]) -> dict[str, Any]:
    notebook = await env.export_notebook()
    return {"episode_id": env.state.episode_id, "notebook": dict(notebook)}


_REVIEW_FIELDS = {
    name: {k: v for k, v in spec.items() if k in ("type", "description", "enum")}
    | ({"type": "integer"} if name == "line_number" else {})
    for name, spec in ReviewAction.model_json_schema()["properties"].items()
    if name != "request_id"
}

TOOLS += [
    EnvTool(
        name="list_tasks",
        description="The graded tasks: id, title, family, difficulty, and whether the answer "
        "is a review ('review') or code ('code'). Start one with reset(task_id=...).",
        input_schema={"type": "object", "properties": {}},
        handler=_list_tasks,
        needs_episode=False,
        library_handler=list_tasks_of,
    ),
    EnvTool(
        name="submit",
        description="Submit the episode's answer for grading. On a pr_review task pass the "
        "review fields; on a code task pass nothing (the episode's code is graded in fresh "
        "kernels). Returns the score in [0, 1] and feedback.",
        input_schema={"type": "object", "properties": _REVIEW_FIELDS},
        handler=_submit,
    ),
    EnvTool(
        name="export_episode",
        description="The episode so far as a Jupyter notebook (nbformat 4 JSON): one code cell "
        "per step with its outputs.",
        input_schema={"type": "object", "properties": {}},
        handler=_export_episode,
    ),
]


def result_text(result: dict[str, Any]) -> str:
    """The text content of a tool's result, which is all many MCP hosts show the model.

    A step reads as a notebook user would read its cell (see
    :func:`~kernelenv.models.observation_summary`); a reset also gives the episode id and a
    task's prompt and context; anything else is its JSON.
    """
    if "exit_code" not in result or "stdout" not in result:
        return json.dumps(result)
    fields = {k: v for k, v in result.items() if k in CodeObservation.model_fields}
    observation = CodeObservation.model_validate(fields)
    parts = []
    if "episode_id" in result:  # a reset
        parts.append(f"episode_id: {result['episode_id']}")
        if observation.task_id:
            parts.append(f"task: {observation.task_id} ({observation.difficulty})")
        if observation.task_description:
            parts.append(f"\n{observation.task_description.rstrip()}\n")
        parts += [f"{key}:\n{value}" for key, value in observation.task_context.items()]
    parts.append(observation_summary(observation))
    if observation.previous_feedback:
        parts.append(f"feedback: {observation.previous_feedback}")
    if observation.reward is not None:
        parts.append(f"reward: {observation.reward}")
    return "\n".join(parts)


def find_tool(name: str) -> EnvTool | None:
    """The tool called ``name`` in :data:`TOOLS`, or None."""
    return next((tool for tool in TOOLS if tool.name == name), None)
