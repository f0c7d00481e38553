"""A cap on HTTP request bodies, so an oversized payload gets a 413 instead of eating memory."""

from __future__ import annotations

from fastapi import HTTPException, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """ASGI middleware: bodies over ``max_bytes`` are refused with 413 when the route reads them.

    Both a declared ``Content-Length`` and the bytes actually streamed are checked (chunked
    uploads declare no length).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > self.max_bytes:
                self._refuse(int(declared))
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    self._refuse(received)
            return message

        await self.app(scope, limited_receive, send)

    def _refuse(self, size: int) -> None:
        # An HTTPException passes through FastAPI's body parsing untouched and becomes the reply.
        raise HTTPException(
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"request body of {size} bytes exceeds the server's limit of "
            f"{self.max_bytes} bytes (max_message_bytes)",
        )
