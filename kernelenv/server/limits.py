"""Caps on HTTP request bodies: an oversized payload gets a 413 instead of eating memory, and a
body that stalls gets a 408 instead of holding the connection."""

from __future__ import annotations

import anyio
from fastapi import HTTPException, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """ASGI middleware: bodies over ``max_bytes`` are refused with 413 when the route reads them,
    and a body whose next chunk takes longer than ``chunk_timeout_s`` with 408.

    Both a declared ``Content-Length`` and the bytes actually streamed are checked (chunked
    uploads declare no length).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, chunk_timeout_s: float = 10.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.chunk_timeout_s = chunk_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if declared.isdigit() and int(declared) > self.max_bytes:
                self._refuse(int(declared))
            if body_done:  # later calls only wait for a disconnect: no deadline
                return await receive()
            with anyio.move_on_after(self.chunk_timeout_s):
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_bytes:
                        self._refuse(received)
                    body_done = not message.get("more_body", False)
                return message
            raise HTTPException(
                status_code=status.HTTP_408_REQUEST_TIMEOUT,
                detail=f"the request body stalled for {self.chunk_timeout_s:g} s; send it at once",
            )

        await self.app(scope, limited_receive, send)

    def _refuse(self, size: int) -> None:
        # An HTTPException passes through FastAPI's body parsing untouched and becomes the reply.
        raise HTTPException(
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"request body of {size} bytes exceeds the server's limit of "
            f"{self.max_bytes} bytes (max_message_bytes)",
        )
