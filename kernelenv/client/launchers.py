"""Servers started for a client: a Docker container or a local subprocess, stopped on close."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, Protocol

import anyio
import anyio.to_thread
import httpx

from ..errors import ServerStartError

CONTAINER_PORT = 8000  # OpenEnv's Docker convention: the server listens on 8000


class Launcher(Protocol):
    """Something that starts a server for a client and stops it when the client closes."""

    async def start(self) -> str:
        """Start the server; return its base URL once ``/health`` answers."""
        ...

    async def stop(self) -> None:
        """Stop the server. Safe to call twice."""
        ...


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


async def wait_for_health(
    base_url: str, timeout_s: float, still_starting: Any = None
) -> None:
    """Poll ``GET /health`` until it answers 200.

    Args:
        base_url: The server's ``http://host:port``.
        timeout_s: How long to keep trying.
        still_starting: Optional callable returning a reason string once the server can no
            longer come up (e.g. its process exited), to fail fast.

    Raises:
        ServerStartError: no healthy answer in time, or ``still_starting`` gave a reason.
    """
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/health")).status_code == 200:
                    return
            reason = still_starting() if still_starting is not None else None
            if reason:
                raise ServerStartError(reason)
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"the server at {base_url} did not answer GET /health within {timeout_s:g} s"
                )
            await anyio.sleep(0.1)


class DockerLauncher:
    """Runs ``docker run -d -p <free port>:8000 IMAGE`` and stops the container on close.

    The server gets a fresh random token (the ``token`` attribute) unless ``env_vars`` sets
    ``KERNELENV_TOKEN`` or ``KERNELENV_NO_TOKEN``; it reaches the container through the docker
    CLI's environment, never its command line.

    Args:
        image: The image to run (its server must listen on port 8000).
        port: Host port to publish on (default: a free one).
        env_vars: Environment variables for the container (e.g. ``KERNELENV_MAX_SESSIONS``).
        docker: The docker CLI to use.
        health_timeout_s: How long to wait for ``/health``.
    """

    def __init__(
        self,
        image: str,
        *,
        port: int | None = None,
        env_vars: dict[str, str] | None = None,
        docker: str = "docker",
        health_timeout_s: float = 30.0,
    ) -> None:
        self.image = image
        self.port = port
        self.env_vars = dict(env_vars or {})
        self.token: str | None = self.env_vars.get("KERNELENV_TOKEN")
        if self.token is None and "KERNELENV_NO_TOKEN" not in self.env_vars:
            self.token = secrets.token_urlsafe(32)
        self.docker = docker
        self.health_timeout_s = health_timeout_s
        self.container_id: str | None = None

    async def start(self) -> str:
        port = self.port or free_port()
        command = [self.docker, "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:{CONTAINER_PORT}"]
        for name, value in self.env_vars.items():
            command += ["-e", f"{name}={value}"]
        docker_env = dict(os.environ)
        if self.token is not None and "KERNELENV_TOKEN" not in self.env_vars:
            command += ["-e", "KERNELENV_TOKEN"]  # the value comes from docker's environment
            docker_env["KERNELENV_TOKEN"] = self.token
        command.append(self.image)
        try:
            result = await anyio.run_process(command, check=False, env=docker_env)
        except FileNotFoundError as exc:
            raise ServerStartError(
                f"the docker CLI ({self.docker!r}) was not found; install Docker, or use "
                "CodingEnv.from_local_server() to run the server without it"
            ) from exc
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip() or "no message"
            raise ServerStartError(
                f"docker could not start a container from {self.image!r} (exit code "
                f"{result.returncode}): {detail}. Is the Docker engine running and the image "
                "built (docker build -t IMAGE .)? Without Docker, use "
                "CodingEnv.from_local_server()."
            )
        self.container_id = result.stdout.decode().strip()
        base_url = f"http://127.0.0.1:{port}"
        try:
            await wait_for_health(base_url, self.health_timeout_s)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.stop()
            raise
        return base_url

    async def stop(self) -> None:
        container, self.container_id = self.container_id, None
        if container:
            # --rm removes the container once it has stopped.
            await anyio.run_process([self.docker, "stop", "-t", "5", container], check=False)


class LocalServerLauncher:
    """Runs ``python -m kernelenv serve`` on a free loopback port and stops it on close.

    The server gets a fresh random token (its ``token`` attribute) unless ``token`` or
    ``no_token=True`` is given; it travels in the environment, never on the command line.

    Args:
        python: Interpreter to run the server with (default: this one).
        health_timeout_s: How long to wait for ``/health``.
        **server_options: :class:`~kernelenv.server.ServerConfig` fields
            (``max_sessions=8``, ``token="..."``), passed as ``KERNELENV_*`` variables.
    """

    def __init__(
        self, *, python: str | None = None, health_timeout_s: float = 60.0, **server_options: Any
    ) -> None:
        from ..server.config import ServerConfig

        allowed = set(ServerConfig.model_fields) - {"host", "port"}  # loopback, free port
        unknown = sorted(set(server_options) - allowed)
        if unknown:
            raise TypeError(f"unknown server options {unknown}; choose from {sorted(allowed)}")
        self.python = python or sys.executable
        self.health_timeout_s = health_timeout_s
        if not server_options.get("no_token") and server_options.get("token") is None:
            server_options["token"] = secrets.token_urlsafe(32)
        self.server_options = server_options
        self.token: str | None = server_options.get("token")
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    async def start(self) -> str:
        port = free_port()
        env = {**os.environ, "KERNELENV_HOST": "127.0.0.1", "KERNELENV_PORT": str(port)}
        env.update(
            {f"KERNELENV_{k.upper()}": _env_value(v) for k, v in self.server_options.items()}
        )
        self._log = tempfile.TemporaryFile()  # the server's output, shown if it fails to start
        self.process = subprocess.Popen(
            [self.python, "-m", "kernelenv", "serve", "--log-level", "warning"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            await wait_for_health(base_url, self.health_timeout_s, self._exited)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.stop()
            raise
        return base_url

    def _exited(self) -> str | None:
        assert self.process is not None
        code = self.process.poll()
        if code is None:
            return None
        return f"the local server exited with code {code} before it was ready:\n{self._log_tail()}"

    def _log_tail(self, limit: int = 4000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:]

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()  # uvicorn shuts down gracefully: sessions close, kernels stop
            try:
                await anyio.to_thread.run_sync(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()
                await anyio.to_thread.run_sync(process.wait)
        elif process is not None:
            process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _env_value(value: Any) -> str:
    # pydantic-settings reads lists (allowed_origins, ...) as JSON.
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
