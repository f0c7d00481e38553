"""A deadline on request heads: a client that never finishes its request line and headers is
disconnected instead of holding a connection (and a file descriptor) forever.

uvicorn's ``timeout_keep_alive`` only runs between requests, and stops at the first byte of the
next one; nothing bounds an unfinished head. This protocol adds that bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:  # uvicorn's own choice ("auto"): httptools when installed, else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpProtocol
except ImportError:  # pragma: no cover
    from uvicorn.protocols.http.h11_impl import (  # type: ignore[assignment]
        H11Protocol as _HttpProtocol,
    )


class HeadTimeoutProtocol(_HttpProtocol):
    """uvicorn's HTTP protocol, closing connections whose request head is late.

    The clock starts when the connection opens and again when bytes arrive after a finished
    request; it stops once a request's headers are complete (then the app and the body
    timeout take over). Use :func:`head_timeout_protocol` to set the deadline.
    """

    head_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self._between_requests():
            self._arm_head_timer()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        # uvicorn makes a request's cycle once its headers are complete.
        cycle = self.cycle
        return cycle is None or cycle.response_complete

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        # After a WebSocket upgrade the transport belongs to the WebSocket protocol.
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        if self._between_requests():
            transport.close()


def head_timeout_protocol(timeout_s: float) -> type[HeadTimeoutProtocol]:
    """The protocol class for uvicorn's ``http`` option, with a head deadline of ``timeout_s``."""
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout_s": timeout_s})
