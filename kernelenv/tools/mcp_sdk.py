"""The two majors of the official ``mcp`` SDK behind one face: 1.x and 2.x.

1.x models have camelCase attributes (``inputSchema``, ``isError``), a low-level server whose
handlers are registered with decorators, timeouts as ``timedelta`` and a streamable HTTP client
yielding three values. 2.x has snake_case attributes (``input_schema``, ``is_error``), handlers
passed to the ``Server`` constructor as ``(ctx, params)`` callables, timeouts in seconds and two
values. kernelenv's MCP client tools (:mod:`kernelenv.tools.mcp`) and ``kernelenv mcp``
(:mod:`kernelenv.server.mcp_stdio`) go through these functions only.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from functools import lru_cache
from importlib.metadata import version
from typing import Any

# (name, arguments) -> (text, structured result, is_error)
CallHandler = Callable[[str, dict[str, Any]], Awaitable[tuple[str, dict[str, Any] | None, bool]]]


@lru_cache(maxsize=1)
def sdk_major() -> int:
    """The installed SDK's major version (1 or 2)."""
    return int(version("mcp").split(".", 1)[0])


def attribute(model: Any, name: str, default: Any = None) -> Any:
    """``model.<name>`` under its snake_case (2.x) or camelCase (1.x) spelling."""
    if hasattr(model, name):
        return getattr(model, name)
    camel = re.sub(r"_([a-z])", lambda match: match.group(1).upper(), name)
    return getattr(model, camel, default)


async def list_all_tools(session: Any) -> list[Any]:
    """Every tool of a client session, page after page."""
    from mcp import types

    listed: list[Any] = []
    cursor = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        listed.extend(page.tools)
        cursor = attribute(page, "next_cursor")
        if not cursor:
            return listed


async def call_tool(session: Any, name: str, arguments: dict[str, Any], timeout_s: float) -> Any:
    """``session.call_tool`` with a read timeout in the SDK's own unit."""
    timeout: Any = timeout_s if sdk_major() >= 2 else timedelta(seconds=timeout_s)
    return await session.call_tool(name, arguments, read_timeout_seconds=timeout)


@contextlib.asynccontextmanager
async def http_streams(url: str, headers: dict[str, str]) -> AsyncIterator[tuple[Any, Any]]:
    """The read and write streams of a streamable HTTP connection."""
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async with (
        create_mcp_http_client(headers=headers) as http_client,
        streamable_http_client(url, http_client=http_client) as streams,
    ):
        yield streams[0], streams[1]  # 1.x adds a third value, the session id getter


def lowlevel_server(
    name: str, server_version: str, tools: list[dict[str, Any]], call: CallHandler
) -> Any:
    """A low-level MCP server offering ``tools`` (name, description, inputSchema) and
    answering their calls with ``call``; its errors come back as results with isError set."""
    from mcp import types
    from mcp.server.lowlevel import Server

    def tool_models() -> list[Any]:
        key = "input_schema" if sdk_major() >= 2 else "inputSchema"
        return [
            types.Tool(name=t["name"], description=t["description"], **{key: t["inputSchema"]})
            for t in tools
        ]

    async def answer(name: str, arguments: dict[str, Any]) -> Any:
        try:
            text, structured, is_error = await call(name, arguments)
        except Exception as exc:  # noqa: BLE001 - a failed call is a result, as MCP asks
            text, structured, is_error = str(exc), None, True
        content = [types.TextContent(type="text", text=text)]
        if sdk_major() >= 2:
            return types.CallToolResult(
                content=content, structured_content=structured, is_error=is_error
            )
        return types.CallToolResult(content=content, structuredContent=structured, isError=is_error)

    if sdk_major() >= 2:

        async def on_list_tools(ctx: Any, params: Any) -> Any:
            return types.ListToolsResult(tools=tool_models())

        async def on_call_tool(ctx: Any, params: Any) -> Any:
            return await answer(params.name, dict(params.arguments or {}))

        return Server(
            name, version=server_version, on_list_tools=on_list_tools, on_call_tool=on_call_tool
        )

    server = Server(name, version=server_version)

    @server.list_tools()
    async def list_tools() -> list[Any]:
        return tool_models()

    @server.call_tool()
    async def call_tool_1x(name: str, arguments: dict[str, Any]) -> Any:
        return await answer(name, arguments)

    return server
