"""The bearer token: where a request may carry it, and how it is compared."""

from __future__ import annotations

import secrets

from starlette.requests import HTTPConnection

# A WebSocket may carry the token as this subprotocol plus the token (browsers cannot set an
# Authorization header on a WebSocket, and a subprotocol, unlike ?token=, is never logged).
TOKEN_SUBPROTOCOL_PREFIX = "kernelenv.bearer."
# The subprotocol the server then answers with (a browser fails a socket whose server picks
# none of the offered ones).
SUBPROTOCOL = "kernelenv"
# Methods that may carry the token as ?token= (links a user opens; writes need the header).
QUERY_TOKEN_METHODS = {"GET", "HEAD"}


def presented_token(conn: HTTPConnection) -> str | None:
    """The token a request carries, or None.

    Looked for in ``Authorization: Bearer``; on a WebSocket also in the subprotocol
    ``kernelenv.bearer.<token>``; on a WebSocket or a GET also in ``?token=``.
    """
    scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    is_websocket = conn.scope["type"] == "websocket"
    if is_websocket:
        for protocol in conn.scope.get("subprotocols", []):
            if protocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
                return protocol.removeprefix(TOKEN_SUBPROTOCOL_PREFIX)
    if is_websocket or conn.scope.get("method") in QUERY_TOKEN_METHODS:
        return conn.query_params.get("token")
    return None


def token_problem(conn: HTTPConnection, token: str | None) -> str | None:
    """Why ``conn`` may not pass a server whose token is ``token`` (None: it may)."""
    if token is None:
        return None
    presented = presented_token(conn)
    if presented is None:
        return (
            "missing token: send 'Authorization: Bearer <token>' (the token is printed by "
            "`kernelenv serve` at start, or set with KERNELENV_TOKEN / --token-file)"
        )
    if not secrets.compare_digest(presented.encode(), token.encode()):
        return "invalid token"
    return None
