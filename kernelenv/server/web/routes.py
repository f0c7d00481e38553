"""Serving the playground's static files at ``/web`` (no build step, nothing fetched at run time)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

WEB_PATH = "/web"
STATIC_DIR = Path(__file__).with_name("static")


def mount_playground(app: FastAPI, path: str = WEB_PATH) -> None:
    """Serve the playground at ``path`` (``/web`` redirects to ``/web/``, which is the page).

    The files are public on purpose, also when the server has a token: they hold no data, and
    the page sends the token itself on every call (``?token=`` on the WebSocket, an
    ``Authorization: Bearer`` header on fetches).

    Args:
        app: The server's FastAPI app.
        path: Where to mount the page.
    """
    app.mount(path, StaticFiles(directory=STATIC_DIR, html=True), name="web")
