"""Serving the playground's static files at ``/web`` (no build step, nothing fetched at run time)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB_PATH = "/web"
STATIC_DIR = Path(__file__).with_name("static")
# Output frames (srcdoc, which frame-src does not govern) may not be navigated anywhere: the
# browser checks the embedding page's frame-src before it sends a frame's navigation request,
# so a script or meta refresh in an output reaches no server (their own csp attribute alone
# blocks the attacker's page only once its response came back).
PAGE_POLICY = "frame-src 'none'; child-src 'none'"


class _PlaygroundFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        return response


def mount_playground(app: FastAPI, path: str = WEB_PATH) -> None:
    """Serve the playground at ``path`` (``/web`` redirects to ``/web/``, which is the page).

    The files are public on purpose, also when the server has a token: they hold no data, and
    the page sends the token itself on every call (``?token=`` on the WebSocket, an
    ``Authorization: Bearer`` header on fetches).

    Args:
        app: The server's FastAPI app.
        path: Where to mount the page.
    """
    app.mount(path, _PlaygroundFiles(directory=STATIC_DIR, html=True), name="web")
