"""``/docs`` and ``/redoc``: FastAPI's API pages, behind the token like every other route.

The guard lets a GET carry the token as ``?token=``, so a user opens ``/docs?token=...``; the
page then loads the schema (``/openapi.json``) with the same token.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from .auth import presented_token


def add_docs_routes(app: FastAPI) -> None:
    """Serve the Swagger UI at ``/docs`` and ReDoc at ``/redoc`` (the guard checks the token)."""

    def schema_url(request: Request) -> str:
        token = presented_token(request)
        query = f"?{urlencode({'token': token})}" if token else ""
        return f"{request.scope.get('root_path', '')}{app.openapi_url}{query}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=schema_url(request), title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url=schema_url(request), title=f"{app.title} - ReDoc")
