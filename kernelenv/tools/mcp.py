"""Tools of external MCP servers (stdio or streamable HTTP) offered to agent code as functions.

Uses the official ``mcp`` SDK (``pip install 'kernelenv[mcp]'``). Declare a server in a
registry and every env using the registry connects to it in its own event loop:

    >>> registry = ToolRegistry()
    >>> registry.add_mcp_server(MCPServer.stdio("python", ["weather_server.py"]))
    >>> registry.add_mcp_server(MCPServer.http("http://127.0.0.1:8931/mcp", prefix="web_"))
    >>> env = KernelEnv(tools=registry)   # agent code: forecast(city="Paris")

The calls run on the host, so they work from a kernel that has no network.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import keyword
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

from ..errors import MCPConnectionError, ToolError
from .mcp_sdk import attribute, call_tool, http_streams, list_all_tools
from .registry import MCPServer, Tool, ToolContext

log = logging.getLogger(__name__)


class MCPConnection:
    """A live session with one MCP server, kept by a task of its own.

    The SDK's transports are anyio context managers that must be left by the task that entered
    them, while an env's reset, steps and close run in different tasks; so one task holds the
    session open until :meth:`aclose`.
    """

    def __init__(self, server: MCPServer) -> None:
        self.server = server
        self.tools: list[Tool] = []
        self._session: Any = None
        self._output_schemas: dict[str, dict[str, Any]] = {}
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, server: MCPServer) -> MCPConnection:
        """Connect, handshake and list the server's tools.

        Raises:
            MCPConnectionError: the server could not be reached in ``connect_timeout_s``.
        """
        connection = cls(server)
        connection._task = asyncio.create_task(connection._hold(), name=f"mcp:{server.name}")
        ready = asyncio.create_task(connection._ready.wait())
        try:
            await asyncio.wait(
                {ready, connection._task},
                timeout=server.connect_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            ready.cancel()
        if not connection._ready.is_set():
            problem = "timed out"
            if connection._task.done() and not connection._task.cancelled():
                problem = repr(connection._task.exception())
            await connection.aclose()
            raise MCPConnectionError(
                f"could not connect to MCP server {server.name!r}: {problem}; check its "
                "command or URL"
            )
        return connection

    async def _hold(self) -> None:
        from mcp import ClientSession

        async with contextlib.AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(_transport(self.server))
            session = await stack.enter_async_context(ClientSession(read, write))
            await session.initialize()
            listed = await list_all_tools(session)
            wanted = self.server.tool_names
            for mcp_tool in listed:
                if wanted is None or mcp_tool.name in wanted:
                    self._output_schemas[mcp_tool.name] = attribute(mcp_tool, "output_schema") or {}
                    self.tools.append(self._as_tool(mcp_tool))
            self._session = session
            self._ready.set()
            await self._stop.wait()

    async def call(self, tool_name: str, arguments: dict[str, Any]) -> Any:
        """Call a tool by its MCP name and return its result as Python data.

        Raises:
            ToolError: the tool reported an error, or the server is gone.
        """
        if self._task is None or self._task.done() or self._session is None:
            raise ToolError(f"MCP server {self.server.name!r} is no longer connected")
        result = await call_tool(self._session, tool_name, arguments, self.server.call_timeout_s)
        return result_value(result, self._output_schemas.get(tool_name, {}))

    async def aclose(self) -> None:
        """End the session (and stop a stdio server's process). Safe to call twice."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=10)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        except Exception as exc:  # noqa: BLE001 - the server failed earlier; nothing to close
            log.debug("MCP server %s ended with %r", self.server.name, exc)

    def _as_tool(self, mcp_tool: Any) -> Tool:
        mcp_name = mcp_tool.name
        schema = attribute(mcp_tool, "input_schema") or {}
        signature = signature_from_schema(schema)
        keywords_only = "arguments" in signature.parameters and all(
            p.kind is p.VAR_KEYWORD for p in signature.parameters.values()
        )

        async def invoke(bound: inspect.BoundArguments, context: ToolContext) -> Any:
            arguments = dict(bound.arguments)
            if keywords_only:  # (**arguments): the caller's keywords are the arguments
                arguments = arguments.get("arguments", {})
            return await self.call(mcp_name, arguments)

        return Tool(
            name=python_name(self.server.prefix + mcp_name),
            description=_description(mcp_tool.description or "", schema),
            signature=signature,
            invoke=invoke,
            source=f"mcp:{self.server.name}",
        )


def _transport(server: MCPServer) -> contextlib.AbstractAsyncContextManager[tuple[Any, Any]]:
    if server.url is not None:
        return _http_transport(server)
    if server.command is None:
        raise ValueError("an MCPServer needs a command (stdio) or a url (HTTP)")
    from mcp import StdioServerParameters
    from mcp.client.stdio import stdio_client

    parameters = StdioServerParameters(
        command=server.command,
        args=list(server.args),
        env=dict(server.env) if server.env is not None else None,
        cwd=server.cwd,
    )
    return stdio_client(parameters, errlog=sys.stderr)


def _http_transport(server: MCPServer) -> contextlib.AbstractAsyncContextManager[tuple[Any, Any]]:
    assert server.url is not None
    return http_streams(server.url, dict(server.headers or {}))


def python_name(name: str) -> str:
    """``name`` made a valid Python identifier (``get-weather`` -> ``get_weather``)."""
    clean = re.sub(r"\W", "_", name)
    if not clean or clean[0].isdigit() or keyword.iskeyword(clean):
        clean = "_" + clean
    return clean


def signature_from_schema(schema: Mapping[str, Any]) -> inspect.Signature:
    """The Python signature of a tool's JSON Schema: required parameters first.

    Optional parameters show their schema default (or None); only the arguments a caller
    passes are sent. A schema whose property names are not Python names becomes
    ``(**arguments)``.
    """
    properties: Mapping[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    if not all(n.isidentifier() and not keyword.iskeyword(n) for n in properties):
        return inspect.Signature(
            [inspect.Parameter("arguments", inspect.Parameter.VAR_KEYWORD)]
        )
    params = [
        inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for n in properties if n in required
    ]
    params += [
        inspect.Parameter(
            n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=spec.get("default")
            if isinstance(spec, Mapping) else None
        )
        for n, spec in properties.items() if n not in required
    ]
    return inspect.Signature(params)


def _description(text: str, schema: Mapping[str, Any]) -> str:
    lines = [text.strip()] if text.strip() else []
    documented = [
        f"    {name}: {spec['description']}"
        for name, spec in (schema.get("properties") or {}).items()
        if isinstance(spec, Mapping) and spec.get("description")
    ]
    if documented:
        lines += ["", "Args:", *documented]
    return "\n".join(lines)


def result_value(result: Any, output_schema: Mapping[str, Any]) -> Any:
    """A ``CallToolResult`` as Python data: its structured content, else its text.

    Raises:
        ToolError: the result is an error.
    """
    texts = [item.text for item in result.content if getattr(item, "type", None) == "text"]
    if attribute(result, "is_error"):
        raise ToolError("\n".join(texts) or "the MCP tool reported an error")
    structured = attribute(result, "structured_content")
    if structured is not None:
        # FastMCP wraps a non-object return value as {"result": value}.
        properties = output_schema.get("properties") or {}
        if set(properties) == {"result"} and set(structured) == {"result"}:
            return structured["result"]
        return structured
    if len(result.content) == 1 and texts:
        return texts[0]
    if all(getattr(item, "type", None) == "text" for item in result.content):
        return "\n".join(texts)
    return [item.model_dump(mode="json", exclude_none=True) for item in result.content]
