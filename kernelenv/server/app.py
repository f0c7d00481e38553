"""The FastAPI app: one lifespan owning the kernel pool and the sessions, and the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from .. import __version__
from ..errors import KernelEnvError
from ..runtime.pool import KernelPool
from ..tasks.library import answer_key_dirs
from . import episode_routes, http_routes, mcp_routes, task_routes, ws
from .config import ServerConfig
from .docs_routes import add_docs_routes
from .error_replies import http_error_reply, request_validation_reply
from .guard import RequestGuard
from .limits import BodySizeLimit
from .sessions import EnvFactory, SessionManager, default_env_factory
from .web.routes import mount_playground


def create_app(
    config: ServerConfig | None = None, *, env_factory: EnvFactory = default_env_factory
) -> FastAPI:
    """Build the kernelenv server app.

    Args:
        config: Settings (default: from ``KERNELENV_*`` environment variables).
        env_factory: Makes each session's env (default: a :class:`~kernelenv.KernelEnv` on
            the shared pool).
    """
    config = config or ServerConfig()
    library = config.task_library()  # a missing folder fails here, not at the first request

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        journal_dir = config.journal_path()
        if journal_dir is not None:
            journal_dir.mkdir(parents=True, exist_ok=True)
        async with KernelPool(
            size=config.pool_size,
            sandbox=config.sandbox,
            launch=config.kernel_launch,
            # Answer keys and other episodes' journals must not be readable from agent code.
            hidden_paths=[*answer_key_dirs(library), *([journal_dir] if journal_dir else [])],
        ) as pool:
            sessions = SessionManager(pool, config, env_factory)
            app.state.pool, app.state.sessions = pool, sessions
            async with anyio.create_task_group() as background:
                background.start_soon(sessions.run_reaper)
                try:
                    yield
                finally:
                    background.cancel_scope.cancel()
                    with anyio.CancelScope(shield=True):
                        await sessions.aclose()

    app = FastAPI(
        title="kernelenv",
        version=__version__,
        description=http_routes.DESCRIPTION,
        lifespan=lifespan,
        # Served by add_docs_routes instead, so they carry the token to the schema they load.
        docs_url=None,
        redoc_url=None,
    )
    app.state.config = config
    app.add_middleware(
        BodySizeLimit,
        max_bytes=config.max_message_bytes,
        chunk_timeout_s=config.request_head_timeout_s,
    )
    # Outermost: Host, Origin, Content-Type and token are checked before anything else runs.
    app.add_middleware(RequestGuard, config=config)
    app.add_exception_handler(KernelEnvError, http_error_reply)
    app.add_exception_handler(ValidationError, http_error_reply)
    app.add_exception_handler(RequestValidationError, request_validation_reply)
    app.include_router(http_routes.router)
    app.include_router(ws.router)
    app.include_router(mcp_routes.router)
    app.include_router(task_routes.router)
    app.include_router(episode_routes.router)
    add_docs_routes(app)
    mount_playground(app)  # the browser playground at /web
    return app

