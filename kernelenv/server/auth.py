"""Optional bearer-token auth on every route but the public ones (``/health``)."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, WebSocketException, status
from starlette.requests import HTTPConnection

from .deps import Config

# Paths served without a token (health checks come from Docker and launchers).
PUBLIC_PATHS: set[str] = {"/health"}


def presented_token(conn: HTTPConnection) -> str | None:
    """The token a request carries: ``Authorization: Bearer``, or ``?token=`` on a WebSocket."""
    scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    if conn.scope["type"] == "websocket":  # browsers cannot set headers on a WebSocket
        return conn.query_params.get("token")
    return None


async def require_token(conn: HTTPConnection, config: Config) -> None:
    """Reject the request unless the server has no token or the request presents it."""
    if config.token is None or conn.url.path in PUBLIC_PATHS:
        return
    token = presented_token(conn)
    if token is not None and secrets.compare_digest(token.encode(), config.token.encode()):
        return
    message = (
        "missing bearer token: send 'Authorization: Bearer <token>'"
        if token is None
        else "invalid bearer token"
    )
    if conn.scope["type"] == "websocket":
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION, reason=message)
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=message,
        headers={"WWW-Authenticate": "Bearer"},
    )
