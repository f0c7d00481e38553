"""A real kernelenv server on loopback for benchmarks, and a lean client speaking OpenEnv frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

START_TIMEOUT_S = 120.0

# How the server journals episodes: "flush" (its default: each step written and flushed
# before the reply, which survives the server being killed), "fsync" (also forced to the disk:
# survives the machine crashing), "off".
JOURNAL_MODES = ("fsync", "flush", "off")


def server_available() -> bool:
    """Whether this checkout has the ``kernelenv serve`` command."""
    from ..cli import COMMANDS

    return "serve" in COMMANDS


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``kernelenv serve`` in a child process on a free loopback port, stopped on exit.

    A separate process, as in deployment: the server's event loop does not share the
    benchmark's. Settings go through the server's ``KERNELENV_*`` environment variables.
    """

    def __init__(
        self, *, pool_size: int = 1, max_sessions: int = 8, step_timeout_s: float = 60.0,
        journal: str = "flush",
    ):
        if journal not in JOURNAL_MODES:
            raise ValueError(f"journal must be one of {', '.join(JOURNAL_MODES)}, not {journal!r}")
        self.port = free_port()
        self.token = secrets.token_urlsafe(32)  # servers refuse clients without one
        self.settings = {
            "KERNELENV_TOKEN": self.token,
            "KERNELENV_HOST": "127.0.0.1",
            "KERNELENV_PORT": str(self.port),
            "KERNELENV_POOL_SIZE": str(pool_size),
            "KERNELENV_MAX_SESSIONS": str(max_sessions),
            "KERNELENV_MAX_CONNECTIONS": str(max(256, max_sessions + 16)),
            "KERNELENV_STEP_TIMEOUT_S": str(step_timeout_s),
            "KERNELENV_JOURNAL": "false" if journal == "off" else "true",
            "KERNELENV_JOURNAL_FSYNC": "true" if journal == "fsync" else "false",
        }
        # The journal goes to a scratch directory, not the user's state directory.
        self._journal_dir: tempfile.TemporaryDirectory | None = None
        self._process: subprocess.Popen | None = None
        self._log: Any = None  # the server's stderr (a file: a full pipe would stall it)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint OpenEnv's clients use, with the token (WebSockets may carry
        it as ``?token=``; the server keeps it out of its log)."""
        return f"ws://127.0.0.1:{self.port}/ws?token={self.token}"

    @property
    def pid(self) -> int | None:
        """The server process id, while it runs."""
        return self._process.pid if self._process is not None else None

    async def __aenter__(self) -> ServerProcess:
        self._journal_dir = tempfile.TemporaryDirectory(prefix="kernelenv-bench-journal-")
        env = {**os.environ, **self.settings, "KERNELENV_JOURNAL_DIR": self._journal_dir.name}
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "kernelenv", "serve"], env=env,
            stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True,
        )
        try:
            await self._wait_healthy()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError(f"kernelenv serve exited at start-up:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(self.base_url + "/health", timeout=2)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"kernelenv serve did not answer /health within {START_TIMEOUT_S} s")

    async def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s). Safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            for _ in range(100):
                if process.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._journal_dir is not None:
            self._journal_dir.cleanup()
            self._journal_dir = None

    def log_tail(self, limit: int = 2000) -> str:
        """The end of what the server wrote to stderr."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:]


class WireSession:
    """One WebSocket session speaking OpenEnv's frames (what ``EnvClient`` sends), nothing more.

    Kept this lean so a benchmark measures the server, not a client library.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._ws: Any = None

    async def __aenter__(self) -> WireSession:
        from websockets.asyncio.client import connect

        self._ws = await connect(self.url, max_size=2**24, open_timeout=60)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.send(json.dumps({"type": "close"}))
            await self._ws.close()
            self._ws = None

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send one frame and return the ``data`` of its reply; error frames raise."""
        await self._ws.send(json.dumps(frame))
        reply = json.loads(await self._ws.recv())
        if reply.get("type") == "error":
            raise RuntimeError(f"server error: {reply.get('data')}")
        return reply.get("data", {})

    async def reset(self, **kwargs: Any) -> dict[str, Any]:
        """``reset``; returns the observation reply's data."""
        return await self.request({"type": "reset", "data": kwargs})

    async def step(self, code: str) -> dict[str, Any]:
        """``step`` with ``code``; returns the observation reply's data."""
        return await self.request({"type": "step", "data": {"code": code}})

    async def state(self) -> dict[str, Any]:
        """``state``; returns the state dict."""
        return await self.request({"type": "state"})
