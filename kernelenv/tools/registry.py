"""Tools for agent code: host-side functions that appear in the kernel as plain Python functions.

A :class:`ToolRegistry` lists the tools; an env given one (``KernelEnv(tools=registry)``)
defines a stub for each tool in every episode's kernel. Calling the stub runs the tool on the
host, in the env's event loop (see :mod:`kernelenv.tools.bridge`), so tools keep working when
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
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
from pydantic import BaseModel, Field

TOOL_CALLS_KEY = "tool_calls"


@dataclass(frozen=True)
class ToolContext:
    """What a tool may know about the episode it serves.

    A tool receives it when one of its parameters is annotated ``ToolContext``; that parameter
    is hidden from the agent.

    Attributes:
        episode_id: The episode the call comes from.
        files_dir: The episode's own host directory (see :mod:`kernelenv.tools.files`),
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


@dataclass(frozen=True)
class MCPServer:
    """How to reach an MCP server, and how its tools are named in agent code.

    Build one with :meth:`stdio` or :meth:`http`.

    Attributes:
        name: A label for errors and the recorded tool source.
        command: The program to start (stdio servers).
        args: Its arguments.
        env: Extra environment variables for it.
        cwd: Its working directory.
        url: The streamable HTTP endpoint (HTTP servers), e.g. ``http://host:port/mcp``.
        headers: HTTP headers sent with every request (e.g. authorization).
        prefix: Prepended to every tool name in agent code (avoids clashes between servers).
        connect_timeout_s: Budget for starting, handshaking and listing tools.
        call_timeout_s: Budget of one tool call.
        tool_names: Only these tools of the server (by their MCP names); None offers all.
    """

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] | None = None
    prefix: str = ""
    connect_timeout_s: float = 30.0
    call_timeout_s: float = 60.0
    tool_names: tuple[str, ...] | None = None

    @classmethod
    def stdio(
        cls,
        command: str,
        args: Sequence[str] = (),
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        **options: Any,
    ) -> MCPServer:
        """A server started as a child process, speaking MCP on its stdin/stdout."""
        return cls(name=name or command, command=command, args=tuple(args), env=env, cwd=cwd,
                   **options)

    @classmethod
    def http(
        cls,
        url: str,
        *,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> MCPServer:
        """A server reached over MCP's streamable HTTP transport at ``url``."""
        return cls(name=name or url, url=url, headers=headers, **options)


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
        """Offer the tools of an MCP server (see :class:`kernelenv.tools.mcp.MCPServer`)."""
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
