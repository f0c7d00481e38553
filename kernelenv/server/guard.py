"""Checks on every request before it reaches a route: Host, Origin, Content-Type and the token.

What they stop, as Jupyter Server does (``check_host``, ``check_origin``, token auth):

- a ``Host`` outside the allow-list: DNS rebinding (a page whose name later resolves to 127.0.0.1
  sends its own name as ``Host``);
- a foreign ``Origin`` on ``/ws`` or on a state-changing request: pages of other sites driving
  the server from the user's browser (WebSockets have no same-origin policy);
- a POST that is not ``application/json``: a browser's "simple request" (``text/plain``) goes
  out without a CORS preflight;
- no token: anyone else who can reach the port.
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import token_problem
from .config import ServerConfig

# Paths served without a token: the health check (Docker, launchers) and the playground's
# static files (they hold no data; the page asks for the token).
PUBLIC_PATHS = {"/health"}
PUBLIC_PREFIXES = ("/web",)
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class RequestGuard:
    """ASGI middleware refusing requests by Host (403), Origin (403), Content-Type (415) and
    token (401) before any route sees them.

    Args:
        app: The app to guard.
        config: The server's settings (``token``, ``allowed_hosts``, ``allowed_origins``).
    """

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.allowed_hosts = {name.lower().rstrip(".") for name in config.allowed_hosts}
        if config.host not in ("0.0.0.0", "::", ""):
            self.allowed_hosts.add(config.host.lower())
        self.allowed_origins = {_normal_origin(origin) for origin in config.allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(HTTPConnection(scope))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, code, message = refusal
        await _refuse(scope, receive, send, status, code, message)

    def refusal(self, conn: HTTPConnection) -> tuple[int, str, str] | None:
        """(HTTP status, error code, message) refusing ``conn``, or None to let it through."""
        host = conn.headers.get("host")
        if host is not None and not self.host_allowed(host):
            return 403, "HOST_NOT_ALLOWED", (
                f"Host {host!r} is not served here (a DNS rebinding attempt?). Use localhost or "
                "an IP address, or allow the name with --allow-host / KERNELENV_ALLOWED_HOSTS"
            )
        method = conn.scope.get("method", "GET")
        changes_state = conn.scope["type"] == "websocket" or method not in SAFE_METHODS
        origin = conn.headers.get("origin")
        if changes_state and origin is not None and not self.origin_allowed(origin, host):
            return 403, "ORIGIN_NOT_ALLOWED", (
                f"Origin {origin!r} may not use this server (cross-site request). Serve the "
                "page from the server itself (/web), or allow its origin with --allow-origin / "
                "KERNELENV_ALLOWED_ORIGINS"
            )
        if conn.scope["type"] == "http" and method not in SAFE_METHODS:
            content_type = conn.headers.get("content-type", "")
            if not _is_json(content_type):
                return 415, "UNSUPPORTED_MEDIA_TYPE", (
                    f"{method} bodies must be JSON: send 'Content-Type: application/json' "
                    f"(got {content_type or 'no Content-Type'!r})"
                )
        path = conn.scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        problem = token_problem(conn, self.config.token)
        return (401, "UNAUTHORIZED", problem) if problem else None

    def host_allowed(self, host: str) -> bool:
        """Whether a ``Host`` header names this server.

        Localhost names and IP addresses always do (a DNS rebinding attack needs a name that
        resolves to this machine), as do the bind host and ``allowed_hosts``.
        """
        if "*" in self.allowed_hosts:
            return True
        name = _host_name(host)
        if name is None:
            return False
        if name in LOCAL_NAMES or name.endswith(".localhost") or name in self.allowed_hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Whether a page of ``origin`` may drive the server reached as ``host``."""
        if "*" in self.allowed_origins:
            return True
        normal = _normal_origin(origin)
        if normal in self.allowed_origins:
            return True
        if normal == "null" or host is None:  # sandboxed frames, file:// pages
            return False
        # Same origin: the page was served by this server under the same host and port.
        return urlsplit(normal).netloc == host.lower()


def _host_name(host: str) -> str | None:
    """The name of a ``Host`` header (no port, no IPv6 brackets), or None if malformed."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def _normal_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def _refuse(
    scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str
) -> None:
    body = json.dumps({"detail": message, "code": code}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        prefix = "websocket."
    else:
        prefix = ""
    await send({"type": f"{prefix}http.response.start", "status": status, "headers": headers})
    await send({"type": f"{prefix}http.response.body", "body": body})
