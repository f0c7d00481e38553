"""Dependency aliases that give routes the server's config, kernel pool and sessions."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from ..runtime.pool import KernelPool
from .config import ServerConfig
from .sessions import SessionManager


def get_config(conn: HTTPConnection) -> ServerConfig:
    """The app's :class:`ServerConfig`."""
    return conn.app.state.config


def get_pool(conn: HTTPConnection) -> KernelPool:
    """The kernel pool shared by all sessions."""
    return conn.app.state.pool


def get_sessions(conn: HTTPConnection) -> SessionManager:
    """The session manager (``sessions.env(episode_id)`` finds an episode's KernelEnv)."""
    return conn.app.state.sessions


Config = Annotated[ServerConfig, Depends(get_config)]
Pool = Annotated[KernelPool, Depends(get_pool)]
Sessions = Annotated[SessionManager, Depends(get_sessions)]
