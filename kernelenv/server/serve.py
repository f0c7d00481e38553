"""Running the app under uvicorn: in the foreground (``kernelenv serve``) or on a thread."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from ..errors import KernelEnvError
from ..runtime.open_files import (
    DESCRIPTORS_PER_KERNEL,
    kernels_within_open_file_limit,
    raise_open_file_limit,
)
from .app import create_app
from .config import ServerConfig
from .discovery import url_host, write_server_info
from .log_redaction import install_token_redaction
from .slow_clients import head_timeout_protocol
from .ws import READ_AHEAD

log = logging.getLogger(__name__)


def uvicorn_config(
    config: ServerConfig, app: FastAPI | None = None, **options: Any
) -> uvicorn.Config:
    """The uvicorn settings the kernelenv server runs with.

    Args:
        config: The server's settings (host, port, message limit).
        app: The app to serve (default: ``create_app(config)``).
        **options: Further ``uvicorn.Config`` options (e.g. ``log_level``).
    """
    options.setdefault("log_level", "warning")
    settings = uvicorn.Config(
        app if app is not None else create_app(config),
        host=config.host,
        port=config.port,
        http=head_timeout_protocol(config.request_head_timeout_s),
        # websockets' Sans-I/O protocol: it stops reading the socket while a received message
        # waits for the app, so a connection holds at most READ_AHEAD + 1 messages of at most
        # max_message_bytes; a larger message closes the connection with code 1009.
        ws="websockets-sansio",
        ws_max_size=config.max_message_bytes,
        ws_max_queue=READ_AHEAD,  # used by the other WebSocket protocols, should one be chosen
        limit_concurrency=config.max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        **options,
    )
    install_token_redaction()  # after uvicorn configured its loggers
    return settings


def serve(
    config: ServerConfig, on_listening: Callable[[str], None] | None = None, **options: Any
) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM), announced to local clients by a server
    info file (:mod:`kernelenv.server.discovery`) while it listens.

    Args:
        config: The server's settings.
        on_listening: Called with the server's URL once its port is bound.
        **options: Further ``uvicorn.Config`` options (e.g. ``log_level``).
    """
    raise_open_file_limit()
    room = kernels_within_open_file_limit()
    if room is not None and room < config.max_sessions:
        log.warning(
            "max_sessions is %d, but this process's open-file limit leaves room for about %d "
            "kernels (each holds some %d descriptors here): raise the limit (ulimit -n; a hard "
            "limit needs root with CAP_SYS_RESOURCE) or lower max_sessions, or kernel starts "
            "will fail past that", config.max_sessions, room, DESCRIPTORS_PER_KERNEL,
        )  # fmt: skip
    hide_process_memory()
    _AnnouncedServer(uvicorn_config(config, **options), config, on_listening).run()


class _AnnouncedServer(uvicorn.Server):
    """A uvicorn server that writes its info file once its sockets are bound (not before: a
    port taken by another program must not be announced) and removes it when it stops."""

    def __init__(
        self,
        settings: uvicorn.Config,
        config: ServerConfig,
        on_listening: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(settings)
        self.kernelenv_config = config
        self.on_listening = on_listening
        self.info_file: Path | None = None

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            port = next((s.getsockname()[1] for srv in self.servers for s in srv.sockets),
                        self.kernelenv_config.port)
            url = f"http://{url_host(self.kernelenv_config.host)}:{port}"
            self.info_file = write_server_info(url, self.kernelenv_config.token)
            if self.on_listening is not None:
                self.on_listening(url)

    async def shutdown(self, sockets: Any = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            if self.info_file is not None:
                with contextlib.suppress(OSError):
                    self.info_file.unlink()


PR_SET_DUMPABLE = 4


def hide_process_memory() -> None:
    """Make this process non-dumpable: its ``/proc/<pid>/environ``, ``mem``, ``fd`` and
    ``maps`` (the token is in its memory, maybe in its environment) then need
    CAP_SYS_PTRACE, even for processes of the same user, such as kernels at the ``limits``
    level (their capabilities are dropped). Kernels are not affected: exec makes a process
    dumpable again."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


class ServerThread:
    """A kernelenv server on a background thread of this process, for tests and notebooks.

    Example:
        >>> with ServerThread(ServerConfig(port=0)) as server:
        ...     print(server.base_url)

    Args:
        config: The server's settings; port 0 picks a free port.
        app: The app to serve (default: ``create_app(config)``).
        start_timeout_s: How long to wait for the server to accept connections.
    """

    def __init__(
        self, config: ServerConfig, app: FastAPI | None = None, start_timeout_s: float = 60.0
    ) -> None:
        self.config = config
        self.app = app if app is not None else create_app(config)
        self.server = uvicorn.Server(uvicorn_config(config, self.app))
        self.start_timeout_s = start_timeout_s
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (the real one when port 0 was asked for)."""
        for server in getattr(self.server, "servers", []):
            for sock in server.sockets:
                return sock.getsockname()[1]
        return self.config.port

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.config.host}:{self.port}"

    def start(self) -> ServerThread:
        """Start serving and wait until the server accepts connections."""
        self._thread = threading.Thread(
            target=self.server.run, name="kernelenv-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise KernelEnvError("the kernelenv server did not start; see its log")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving (closing every session) and wait for the thread. Safe to call twice."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
