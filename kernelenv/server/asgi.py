"""The server as a module-level ASGI app (``uvicorn kernelenv.server.asgi:app``), configured
from ``KERNELENV_*`` variables; ``openenv.yaml`` names it."""

from __future__ import annotations

from .app import create_app

app = create_app()
