"""Tools for agent code: host-side functions that appear in the kernel as plain Python functions.

A :class:`ToolRegistry` lists the tools; an env given one (``KernelEnv(tools=registry)``)
defines a stub for each tool in every episode's kernel. Calling the stub runs the tool on the
host, in the env's event loop (see :mod:`kernelenv.tool_bridge`), so tools keep working when
the kernel has no network and cannot see the host's files. Every call is recorded in the step's
``observation.metadata["tool_calls"]``.

Example:
    >>> registry = ToolRegistry()
    >>> @registry.register
    ... def lookup(word: str) -> str:
    ...     '''Look a word up in the host's dictionary.'''
    ...     return DICTIONARY[word]
    >>> env = KernelEnv(tools=registry)   # agent code: lookup("kernel")
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from .mcp_client import MCPServer

TOOL_CALLS_KEY = "tool_calls"


@dataclass(frozen=True)
class ToolContext:
    """What a tool may know about the episode it serves.

    A tool receives it when one of its parameters is annotated ``ToolContext``; that parameter
    is hidden from the agent.

    Attributes:
        episode_id: The episode the call comes from.
        files_dir: The episode's own host directory (see :mod:`kernelenv.file_tools`),
            removed with the episode.
    """

    episode_id: str
    files_dir: Path


class ToolCall(BaseModel):
    """One call of a tool by agent code, as recorded in ``metadata["tool_calls"]``."""

    tool: str = Field(description="Name of the tool called.")
    arguments: dict[str, Any] = Field(description="The arguments, by parameter name.")
    ok: bool = Field(description="True when the tool returned; False when it raised.")
    result: Any = Field(default=None, description="What the tool returned (JSON), if ok.")
    result_truncated: bool = Field(
        default=False,
        description="True when the recorded result is a text preview of a larger result "
        "(agent code still received the whole result).",
    )
    error_type: str | None = Field(default=None, description="Exception class name, if not ok.")
    error: str | None = Field(default=None, description="Exception message, if not ok.")
    duration_s: float = Field(description="Host-side time the call took, in seconds.")


class ToolError(RuntimeError):
    """A tool failed in a way that has no matching builtin exception (raised in agent code)."""


ToolFunction = Callable[..., Any]


class Tool:
    """A tool: a name, a description, the signature agent code sees, and its implementation.

    Args:
        name: The function name in the agent's namespace (a Python identifier).
        description: What the tool does (the stub's docstring).
        signature: The parameters agent code passes (no :class:`ToolContext` parameter).
        invoke: Runs the tool: ``await invoke(bound_arguments, context)``.
        source: Where the tool comes from ("python", or "mcp:<server>").
    """

    def __init__(
        self,
        name: str,
        description: str,
        signature: inspect.Signature,
        invoke: Callable[[inspect.BoundArguments, ToolContext], Awaitable[Any]],
        source: str = "python",
    ) -> None:
        if not name.isidentifier():
            raise ValueError(f"tool name {name!r} is not a Python identifier; pass name=...")
        self.name = name
        self.description = description
        self.signature = signature
        self.invoke = invoke
        self.source = source

    @classmethod
    def from_function(
        cls, fn: ToolFunction, *, name: str | None = None, description: str | None = None
    ) -> Tool:
        """A tool that calls ``fn`` (sync functions run in a worker thread, off the loop)."""
        full = inspect.signature(fn)
        context_param = _context_parameter(fn, full)
        visible = full.replace(
            parameters=[p for p in full.parameters.values() if p.name != context_param],
            return_annotation=inspect.Signature.empty,
        )

        async def invoke(bound: inspect.BoundArguments, context: ToolContext) -> Any:
            kwargs = dict(bound.kwargs)
            if context_param:
                kwargs[context_param] = context
            if inspect.iscoroutinefunction(fn):
                return await fn(*bound.args, **kwargs)
            # Abandoned on cancellation (the caller was interrupted): the thread finishes alone.
            return await anyio.to_thread.run_sync(
                lambda: fn(*bound.args, **kwargs), abandon_on_cancel=True
            )

        return cls(
            name or fn.__name__,
            description if description is not None else inspect.getdoc(fn) or "",
            visible,
            invoke,
        )

    def __repr__(self) -> str:
        return f"<Tool {self.name}{self.signature} from {self.source}>"


def _context_parameter(fn: ToolFunction, signature: inspect.Signature) -> str | None:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to their text
        hints = {}
    for param in signature.parameters.values():
        annotation = hints.get(param.name, param.annotation)
        if annotation is ToolContext or annotation == "ToolContext":
            return param.name
    return None


class ToolRegistry:
    """The tools an env offers to agent code: Python functions and MCP servers' tools.

    A registry only describes tools, so one registry can serve many envs. MCP servers added
    with :meth:`add_mcp_server` are connected by each env that uses the registry, in that
    env's event loop, and disconnected when it closes.

    Args:
        tools: Functions or :class:`Tool` objects to register at once.
    """

    def __init__(self, tools: Iterable[ToolFunction | Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self.mcp_servers: list[MCPServer] = []
        for tool in tools:
            self.add(tool)

    def register(
        self,
        fn: ToolFunction | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> Any:
        """Register ``fn`` as a tool; usable as ``@registry.register`` or ``@registry.register(name=...)``.

        Returns:
            ``fn`` unchanged (so the decorated function stays usable on the host).
        """
        if fn is None:
            return lambda f: self.register(f, name=name, description=description)
        self.add(Tool.from_function(fn, name=name, description=description))
        return fn

    def add(self, tool: ToolFunction | Tool) -> Tool:
        """Add a tool (a function is wrapped with :meth:`Tool.from_function`).

        Raises:
            ValueError: a tool of that name is already registered.
        """
        if not isinstance(tool, Tool):
            tool = Tool.from_function(tool)
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def add_mcp_server(self, server: MCPServer) -> None:
        """Offer the tools of an MCP server (see :class:`kernelenv.mcp_client.MCPServer`)."""
        self.mcp_servers.append(server)

    def get(self, name: str) -> Tool:
        """The tool called ``name``.

        Raises:
            KeyError: no such tool.
        """
        return self._tools[name]

    @property
    def names(self) -> list[str]:
        """Names of the registered Python tools (MCP tools are known once connected)."""
        return list(self._tools)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools
