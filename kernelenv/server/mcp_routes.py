"""MCP on the server: JSON-RPC 2.0 ``tools/list`` and ``tools/call``, on ``POST /mcp`` and WS."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from .. import __version__
from ..env import KernelEnv
from ..errors import JsonRpcError, KernelEnvError
from ..tasks.library import TaskLibrary
from .deps import Sessions
from .mcp_tools import TOOLS, EnvTool, find_tool, result_text
from .sessions import Session, SessionKind, SessionManager

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "2025-06-18"
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Finds the env a tool call runs on; returns it with a cleanup to run after the call.
EnvResolver = Callable[[EnvTool, dict[str, Any]], Awaitable["ToolTarget"]]

router = APIRouter(tags=["mcp"])


class ToolTarget:
    """The session a tool call runs on, and what to do once the call ends."""

    def __init__(self, sessions: SessionManager, session: Session, *, new: bool) -> None:
        self.sessions = sessions
        self.session = session
        self.new = new

    @property
    def env(self) -> KernelEnv:
        """The env the tool runs on."""
        return self.session.env

    async def finish(self, ok: bool) -> None:
        """Keep the session's episode id in step with the env; drop a new session that failed."""
        if self.new and not ok:
            await self.sessions.close(self.session)
        else:
            self.sessions.track_episode(self.session)


def rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    """A JSON-RPC 2.0 error response."""
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


async def handle_jsonrpc(
    message: Any, resolve: EnvResolver, *, http: bool, library: TaskLibrary | None = None
) -> dict[str, Any]:
    """Answer one JSON-RPC 2.0 request (``initialize``, ``ping``, ``tools/list``, ``tools/call``).

    Args:
        message: The decoded request.
        resolve: Finds the session a tool call runs on.
        http: True on ``POST /mcp``, where tools name their episode with ``episode_id``.
        library: The server's task library, for tools answered without an episode.
    """
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or "method" not in message:
        return rpc_error(
            message.get("id") if isinstance(message, dict) else None,
            INVALID_REQUEST,
            "invalid JSON-RPC 2.0 request: expected an object with 'jsonrpc': '2.0' and 'method'",
        )
    request_id = message.get("id")
    params = message.get("params") or {}
    try:
        if not isinstance(params, dict):
            raise JsonRpcError(INVALID_PARAMS, "'params' must be an object")
        result = await _dispatch(str(message["method"]), params, resolve, http=http, library=library)
    except JsonRpcError as exc:
        return rpc_error(request_id, exc.code, exc.message)
    except Exception as exc:  # a bug must not cost the client its session
        log.error("MCP %s failed", message["method"], exc_info=exc)
        return rpc_error(request_id, INTERNAL_ERROR, f"internal error: {exc}")
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


async def _dispatch(
    method: str,
    params: dict[str, Any],
    resolve: EnvResolver,
    *,
    http: bool,
    library: TaskLibrary | None,
) -> dict[str, Any]:
    if method == "initialize":
        return {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "kernelenv", "version": __version__},
        }
    if method == "ping" or method.startswith("notifications/"):
        return {}  # acknowledged (a WebSocket frame always gets exactly one reply)
    if method == "tools/list":
        return {"tools": [tool_listing(tool, http=http) for tool in TOOLS]}
    if method == "tools/call":
        return await _call_tool(params, resolve, library)
    raise JsonRpcError(METHOD_NOT_FOUND, f"unknown method {method!r}; try 'tools/list'")


def tool_listing(tool: EnvTool, *, http: bool) -> dict[str, Any]:
    """A tool as ``tools/list`` shows it; over HTTP, tools take the episode's id."""
    schema = tool.input_schema
    if http and not tool.starts_episode:
        required = [*schema.get("required", [])]
        if tool.needs_episode:
            required.append("episode_id")
        schema = {
            **schema,
            "properties": {
                **schema.get("properties", {}),
                "episode_id": {"type": "string", "description": "The episode, from 'reset'."},
            },
            "required": required,
        }
    return {"name": tool.name, "description": tool.description, "inputSchema": schema}


async def _call_tool(
    params: dict[str, Any], resolve: EnvResolver, library: TaskLibrary | None
) -> dict[str, Any]:
    name = params.get("name")
    arguments = params.get("arguments") or {}
    tool = find_tool(name) if isinstance(name, str) else None
    if tool is None:
        known = ", ".join(t.name for t in TOOLS)
        raise JsonRpcError(INVALID_PARAMS, f"unknown tool {name!r}; known tools: {known}")
    if not isinstance(arguments, dict):
        raise JsonRpcError(INVALID_PARAMS, "'arguments' must be an object")
    if not tool.needs_episode and arguments.get("episode_id") is None:
        if library is not None and tool.library_handler is not None:
            return _tool_result(tool.library_handler(library, arguments))
        return _tool_result(await tool.handler(None, arguments))
    try:
        target = await resolve(tool, arguments)
    except KernelEnvError as exc:
        raise JsonRpcError(INVALID_PARAMS, str(exc)) from exc
    ok = False
    try:
        with target.sessions.using(target.session):
            result = await tool.handler(target.env, arguments)
        ok = True
    except (KernelEnvError, ValidationError, ValueError, TypeError) as exc:
        # Tool failures go back to the model as a result, as MCP asks.
        return {"content": [{"type": "text", "text": str(exc)}], "isError": True}
    finally:
        await target.finish(ok)
    return _tool_result(result)


def _tool_result(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "content": [{"type": "text", "text": result_text(result)}],
        "structuredContent": result,
        "isError": False,
    }


def http_resolver(sessions: SessionManager) -> EnvResolver:
    """Resolves tool calls of ``POST /mcp``: by ``episode_id``; reset may open a session."""

    async def resolve(tool: EnvTool, arguments: dict[str, Any]) -> ToolTarget:
        episode_id = arguments.get("episode_id")
        if episode_id is not None and not isinstance(episode_id, str):
            raise JsonRpcError(INVALID_PARAMS, "'episode_id' must be a string")
        if tool.starts_episode:
            existing = sessions.find(episode_id) if episode_id else None
            if existing is not None:
                sessions.check_http(existing)
                return ToolTarget(sessions, existing, new=False)
            return ToolTarget(sessions, sessions.open(SessionKind.HTTP), new=True)
        if episode_id is None:
            raise JsonRpcError(
                INVALID_PARAMS, f"tool {tool.name!r} needs 'episode_id' (call 'reset' first)"
            )
        session = sessions.get(episode_id)
        # As on /step: an episode a WebSocket connection drives is that connection's alone.
        sessions.check_http(session)
        return ToolTarget(sessions, session, new=False)

    return resolve


@router.post("/mcp", summary="MCP JSON-RPC 2.0 endpoint (tools/list, tools/call)")
async def mcp_endpoint(request: Request, sessions: Sessions) -> dict[str, Any]:
    """Answer one JSON-RPC 2.0 request; tools name their episode with ``episode_id``."""
    try:
        message = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        return rpc_error(None, PARSE_ERROR, f"invalid JSON: {exc}")
    return await handle_jsonrpc(
        message, http_resolver(sessions), http=True, library=sessions.config.task_library()
    )
