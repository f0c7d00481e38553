"""The kernelenv server: OpenEnv's WebSocket and HTTP protocol over many kernel-backed sessions."""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use, so that the client can import the wire format without FastAPI.
_EXPORTS = {"create_app": "app", "ServerConfig": "config", "ServerThread": "serve"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kernelenv.server' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
