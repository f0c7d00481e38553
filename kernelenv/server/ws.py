"""The ``/ws`` endpoint: OpenEnv's WebSocket frames, one kernel-backed episode per connection."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status

from ..errors import CapacityReachedError
from ..models import OutputEvent, parse_action
from ..wire import (
    ErrorCode,
    ForkReply,
    ForkRequest,
    ResetRequest,
    error_payload,
    observation_payload,
    state_payload,
)
from .auth import SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX
from .deps import Config, Sessions
from .error_replies import error_frame_data
from .mcp_routes import ToolTarget, handle_jsonrpc
from .mcp_tools import EnvTool
from .sessions import Session, SessionKind, SessionManager

log = logging.getLogger(__name__)

router = APIRouter(tags=["websocket"])

FRAME_TYPES = ("reset", "step", "state", "close", "mcp", "fork")
# Key of a step frame's data asking for streamed outputs: an extension of OpenEnv's protocol.
# Only a client that sets it gets ``{"type": "output", "data": <OutputEvent>}`` frames, each
# before the step's usual observation frame; OpenEnv's own clients never see one.
STREAM_KEY = "stream"
# Frames read ahead while one is being served (replies still go out one by one, in order).
# Small on purpose: each may be max_message_bytes; the socket is not read while they wait.
READ_AHEAD = 1
# Close code of a connection that sent no frame for websocket_idle_timeout_s (going away).
IDLE_CLOSE_CODE = status.WS_1001_GOING_AWAY


@router.websocket("/ws")
async def websocket_session(websocket: WebSocket, sessions: Sessions, config: Config) -> None:
    """Serve one OpenEnv session: frames in, exactly one reply per frame, in order."""
    offered = websocket.scope.get("subprotocols", [])
    # A browser that sent its token as a subprotocol needs one of its offers chosen.
    chosen = SUBPROTOCOL if any(
        p == SUBPROTOCOL or p.startswith(TOKEN_SUBPROTOCOL_PREFIX) for p in offered
    ) else None
    await websocket.accept(subprotocol=chosen)
    try:
        session = sessions.open(SessionKind.WEBSOCKET)
    except CapacityReachedError as exc:
        await _send(websocket, "error", error_payload(
            str(exc),
            ErrorCode.CAPACITY_REACHED,
            active_sessions=exc.active_sessions,
            max_sessions=exc.max_sessions,
        ))
        await websocket.close(code=status.WS_1013_TRY_AGAIN_LATER, reason="server at capacity")
        return
    connection = _Connection(websocket, sessions, session, config.websocket_idle_timeout_s)
    try:
        await connection.serve()
    finally:
        await connection.release()


class _Connection:
    """One WebSocket connection's session: reads frames, serves them in order, cleans up."""

    def __init__(
        self,
        websocket: WebSocket,
        sessions: SessionManager,
        session: Session,
        idle_timeout_s: float,
    ) -> None:
        self.websocket = websocket
        self.sessions = sessions
        self.session = session
        self.idle_timeout_s = idle_timeout_s
        self.stepping = False
        self.serving = False  # a frame is being answered: the connection is not idle
        self.closed_by_client = False
        self.idle = False

    async def serve(self) -> None:
        inbox_in, inbox_out = anyio.create_memory_object_stream[str | bytes](READ_AHEAD)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._read, inbox_in, tasks.cancel_scope)
            await self._serve_frames(inbox_out)
            tasks.cancel_scope.cancel()

    async def release(self) -> None:
        """Interrupt a step cut short by a disconnect, then release the session's kernel."""
        with anyio.CancelScope(shield=True):
            kernel = self.session.env.kernel
            if self.stepping and kernel is not None:
                await kernel.interrupt()
            await self.sessions.close(self.session)
            if self.closed_by_client or self.idle:
                reason = f"idle for {self.idle_timeout_s:g} s" if self.idle else None
                code = IDLE_CLOSE_CODE if self.idle else status.WS_1000_NORMAL_CLOSURE
                try:
                    await self.websocket.close(code=code, reason=reason)
                except (RuntimeError, WebSocketDisconnect, OSError):  # the client closed first
                    pass

    async def _read(
        self, inbox: MemoryObjectSendStream[str | bytes], scope: anyio.CancelScope
    ) -> None:
        # Runs beside the frame being served, so a disconnect is seen even mid-step.
        async with inbox:
            while True:
                with anyio.move_on_after(self.idle_timeout_s) as waiting:
                    message = await self.websocket.receive()
                if waiting.cancelled_caught:
                    if self.serving:  # a long step is not idleness
                        continue
                    log.info("closing WebSocket session %s: idle", self.session.episode_id)
                    self.idle = True
                    scope.cancel()
                    return
                if message["type"] == "websocket.disconnect":
                    scope.cancel()  # cancels the step in flight; release() interrupts it
                    return
                await inbox.send(message.get("text") or message.get("bytes") or b"")

    async def _serve_frames(self, inbox: MemoryObjectReceiveStream[str | bytes]) -> None:
        async with inbox:
            async for raw in inbox:
                self.serving = True
                try:
                    with self.sessions.using(self.session):
                        reply = await self._reply(raw)
                finally:
                    self.serving = False
                if reply is None:  # a close frame
                    self.closed_by_client = True
                    return
                try:
                    await _send(self.websocket, *reply)
                except (WebSocketDisconnect, OSError):  # the client left before its reply
                    return

    async def _reply(self, raw: str | bytes) -> tuple[str, dict[str, Any]] | None:
        # Messages over max_message_bytes never get here: uvicorn closes with 1009 (ws_max_size).
        try:
            message = json.loads(raw)
        except ValueError as exc:
            return "error", error_payload(f"invalid JSON: {exc}", ErrorCode.INVALID_JSON)
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return "error", error_payload(
                "a frame must be a JSON object with a string 'type' "
                f"(one of {', '.join(FRAME_TYPES)})",
                ErrorCode.VALIDATION_ERROR,
                errors=[{"loc": ["type"], "msg": "Field required", "type": "missing"}],
            )
        kind = message["type"]
        if kind not in FRAME_TYPES:
            return "error", error_payload(
                f"unknown frame type {kind!r}; expected one of {', '.join(FRAME_TYPES)}",
                ErrorCode.UNKNOWN_TYPE,
            )
        if kind == "close":
            return None
        data = message.get("data")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return "error", error_payload(
                f"'data' of a {kind} frame must be a JSON object, not {type(data).__name__}",
                ErrorCode.VALIDATION_ERROR,
                errors=[{"loc": ["data"], "msg": "Input should be an object", "type": "dict_type"}],
            )
        try:
            return await self._serve(kind, data)
        except Exception as exc:  # the session must outlive any one bad frame
            return "error", error_frame_data(exc, f"{kind} data")

    async def _serve(self, kind: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        env = self.session.env
        if kind == "reset":
            request = ResetRequest.model_validate(data)
            observation = await self.sessions.reset(
                self.session, seed=request.seed, episode_id=request.episode_id, **request.options
            )
            return "observation", observation_payload(observation)
        if kind == "step":
            stream = data.pop(STREAM_KEY, False)
            if not isinstance(stream, bool):
                return "error", error_payload(
                    f"'{STREAM_KEY}' of a step frame must be true or false",
                    ErrorCode.VALIDATION_ERROR,
                    errors=[{"loc": ["data", STREAM_KEY], "msg": "Input should be a valid "
                             "boolean", "type": "bool_type"}],
                )
            action = parse_action(data)
            self.stepping = True  # stays True if a disconnect cancels the step
            try:
                observation = await env.step(
                    action, on_output=self._send_output if stream else None
                )
            except Exception:
                self.stepping = False
                raise
            self.stepping = False
            return "observation", observation_payload(observation)
        if kind == "state":
            return "state", state_payload(env.state)
        if kind == "fork":  # kernelenv's extension: children become HTTP episodes
            request = ForkRequest.model_validate(data)
            self.sessions.check_room(request.n)
            children = await env.fork(request.n)
            return "fork", ForkReply(episode_ids=[c.state.episode_id for c in children]).model_dump()
        return "mcp", await handle_jsonrpc(data, self._resolve_tool, http=False)

    async def _send_output(self, event: OutputEvent) -> None:
        await _send(self.websocket, "output", event.model_dump(mode="json"))

    async def _resolve_tool(self, tool: EnvTool, arguments: dict[str, Any]) -> ToolTarget:
        if tool.starts_episode:
            self.sessions.check_free(arguments.get("episode_id"), self.session)
        return ToolTarget(self.sessions, self.session, new=False)


async def _send(websocket: WebSocket, kind: str, data: dict[str, Any]) -> None:
    await websocket.send_text(json.dumps({"type": kind, "data": data}))
