"""CodingEnv: the client of a kernelenv server over OpenEnv's WebSocket protocol."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from ..errors import EnvClosedError, ServerError
from ..models import Action, CodeAction, CodeObservation, CodeState, OutputCallback, OutputEvent
from ..server.discovery import token_for
from ..sync import BlockingTwin
from ..wire import observation_from_payload
from .launchers import DockerLauncher, Launcher, LocalServerLauncher


@dataclass
class StepResult:
    """What ``reset`` and ``step`` return (OpenEnv's ``StepResult`` shape)."""

    observation: CodeObservation
    """The typed observation, rich fields (outputs, error, status, ...) restored."""
    reward: float | None = None
    """The step's reward, if the server computes one."""
    done: bool = False
    """True when the episode has ended."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The observation's metadata as the server sent it."""


def websocket_url(base_url: str) -> str:
    """``http(s)://host/prefix`` -> ``ws(s)://host/prefix/ws`` (as OpenEnv's clients do)."""
    url = base_url.rstrip("/")
    for old, new in (("https://", "wss://"), ("http://", "ws://")):
        if url.startswith(old):
            url = new + url[len(old):]
    if not url.startswith(("ws://", "wss://")):
        url = "ws://" + url
    return url if url.endswith("/ws") else url + "/ws"


class CodingEnv:
    """Client of a kernelenv server: one connection, one kernel-backed episode at a time.

    Example:
        >>> async with CodingEnv(base_url="http://127.0.0.1:8000") as env:
        ...     await env.reset(seed=0)
        ...     result = await env.step(CodeAction(code="x = 6 * 7; x"))
        ...     result.observation.return_value
        '42'

    Args:
        base_url: The server's URL (``http://``, ``https://``, ``ws://`` or ``wss://``).
        headers: Extra headers of the connection (auth, tracing).
        token: Shortcut for ``headers={"Authorization": f"Bearer {token}"}``. Without one
            (and no such header), a client of a loopback URL sends the token of this user's
            ``kernelenv serve`` at that address, read from its server info file
            (:mod:`kernelenv.server.discovery`), as Jupyter's clients find a Jupyter Server.
        connect_timeout_s: How long opening the connection may take.
        message_timeout_s: How long to wait for a reply (None: as long as the connection
            lives; keep-alive pings detect a dead server, the server bounds every step).
        max_message_bytes: Largest reply accepted (observations can carry images).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        connect_timeout_s: float = 10.0,
        message_timeout_s: float | None = None,
        max_message_bytes: int = 100 << 20,
    ) -> None:
        self.base_url = base_url
        self.headers = dict(headers or {})
        if token is not None:
            self.headers.setdefault("Authorization", f"Bearer {token}")
        self.connect_timeout_s = connect_timeout_s
        self.message_timeout_s = message_timeout_s
        self.max_message_bytes = max_message_bytes
        self._launcher: Launcher | None = None
        self._launched = False
        self._ws: ClientConnection | None = None
        self._lock: asyncio.Lock | None = None
        self._broken: str | None = None
        self._closed = False

    # -- constructors that start a server -------------------------------------------------

    @classmethod
    def from_docker_image(
        cls,
        image: str,
        *,
        port: int | None = None,
        env_vars: dict[str, str] | None = None,
        health_timeout_s: float = 30.0,
        docker: str = "docker",
        **client_options: Any,
    ) -> CodingEnv:
        """A client of a new container of ``image``, started on connect, stopped on close.

        Runs ``docker run -d -p <free port>:8000 image`` and waits up to ``health_timeout_s``
        for ``/health``. The container is started by the first call (or ``async with``).

        Raises (on connect):
            ServerStartError: Docker is missing, its engine is down, or the server did not
                become healthy.
        """
        launcher = DockerLauncher(
            image, port=port, env_vars=env_vars, docker=docker, health_timeout_s=health_timeout_s
        )
        client_options.setdefault("token", launcher.token)
        client = cls(base_url="http://127.0.0.1", **client_options)
        client._launcher = launcher
        return client

    @classmethod
    def from_local_server(
        cls, *, health_timeout_s: float = 60.0, python: str | None = None, **server_options: Any
    ) -> CodingEnv:
        """A client of a new ``kernelenv serve`` subprocess on a free port, stopped on close.

        For users without Docker. ``server_options`` are
        :class:`~kernelenv.server.ServerConfig` fields (``max_sessions``, ``token``, ...);
        without ``token`` (or ``no_token=True``) the server gets a random token this client
        sends.
        """
        launcher = LocalServerLauncher(
            python=python, health_timeout_s=health_timeout_s, **server_options
        )
        # The launcher makes a token for its server unless told otherwise; the client sends it.
        client = cls(base_url="http://127.0.0.1", token=launcher.token)
        client._launcher = launcher
        return client

    # -- the environment API --------------------------------------------------------------

    async def __aenter__(self) -> CodingEnv:
        try:
            await self.connect()
        except BaseException:
            await self.close()  # __aexit__ will not run: stop a server started for us
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection (and start the server first if this client launches one).

        Called by the first request; call it to connect early.
        """
        if self._closed:
            raise EnvClosedError("this CodingEnv is closed; create a new one")
        if self._broken is not None:
            raise EnvClosedError(self._broken)
        if self._ws is not None:
            return
        if self._launcher is not None and not self._launched:
            self.base_url = await self._launcher.start()
            self._launched = True
        if "authorization" not in {name.lower() for name in self.headers}:
            token = token_for(self.base_url)
            if token is not None:
                self.headers["Authorization"] = f"Bearer {token}"
        try:
            self._ws = await connect(
                websocket_url(self.base_url),
                additional_headers=self.headers,
                open_timeout=self.connect_timeout_s,
                max_size=self.max_message_bytes,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            hint = " (check the token)" if status in (401, 403) else ""
            raise ServerError(
                f"{self.base_url} refused the WebSocket connection with HTTP {status}{hint}"
            ) from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            url = websocket_url(self.base_url)
            raise ServerError(f"could not connect to {url}: {exc}") from exc

    async def reset(
        self, *, seed: int | None = None, episode_id: str | None = None, **options: Any
    ) -> StepResult:
        """Start a new episode on a fresh kernel.

        Args:
            seed: Seeds the kernel's random generators.
            episode_id: The new episode's id (the server's state carries exactly this id).
            **options: Further reset options of the server's env (e.g. ``task_id``).
        """
        data = {**options}
        if seed is not None:
            data["seed"] = seed
        if episode_id is not None:
            data["episode_id"] = episode_id
        return _step_result(await self._request({"type": "reset", "data": data}))

    async def step(
        self,
        action: Action | str,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
        on_output: OutputCallback | None = None,
        keep: bool | None = None,
    ) -> StepResult:
        """Run code in the episode's kernel.

        Args:
            action: A :class:`CodeAction` (or the code as a string), or another action
                kind of the server (e.g. a ``ReviewAction`` on a review task).
            timeout_s: This step's budget (default: the action's, else the server's).
            request_id: Idempotency key: resending a step with the same id returns the
                recorded observation instead of running the code twice.
            on_output: Called with each :class:`~kernelenv.models.OutputEvent` as the server
                streams it (a function or a coroutine function), all before this returns.
                An exception it raises is raised once the step's reply has arrived.
            keep: False runs the code in a throwaway fork of the episode's kernel: the
                episode's state, files and step count stay as they were (default: the
                action's ``keep``).
        """
        if isinstance(action, str):
            action = CodeAction(code=action)
        data = action.model_dump(mode="json", exclude_none=True)
        if keep is not None:
            data["keep"] = keep
        if data.get("keep") is True:
            del data["keep"]  # the default: frames stay what servers without the field accept
        if timeout_s is not None:
            data["timeout_s"] = timeout_s
        if request_id is not None:
            data["request_id"] = request_id
        if on_output is not None:
            data["stream"] = True  # the server's opt-in extension: output frames first
        frame = {"type": "step", "data": data}
        return _step_result(await self._request(frame, on_output=on_output))

    async def state(self) -> CodeState:
        """The episode's state (episode_id, step_count, last_exit_code, ...)."""
        reply = await self._request({"type": "state"})
        return CodeState.model_validate(reply.get("data") or {})

    async def mcp(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one MCP JSON-RPC request (``tools/list``, ``tools/call``) on this episode.

        Returns:
            The JSON-RPC response (with ``result`` or ``error``).
        """
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
        return (await self._request({"type": "mcp", "data": request})).get("data") or {}

    async def close(self) -> None:
        """End the session and stop the server if this client started it. Safe to call twice.

        A server this client did not start is never stopped.
        """
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            ws, self._ws = self._ws, None
            if ws is not None:
                try:
                    await ws.send(json.dumps({"type": "close"}))
                except WebSocketException:
                    pass
                await ws.close()
            if self._launcher is not None:
                await self._launcher.stop()

    def sync(self) -> SyncCodingEnv:
        """A blocking twin with the same methods, usable inside a running loop (Jupyter).

        Call it before connecting: the connection lives on the twin's private loop.
        """
        if self._ws is not None:
            raise RuntimeError("sync() must be called before the client connects")
        return SyncCodingEnv(self)

    # -- internals ------------------------------------------------------------------------

    async def _request(
        self, frame: dict[str, Any], *, on_output: OutputCallback | None = None
    ) -> dict[str, Any]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        failures: list[Exception] = []
        async with self._lock:  # one reply per request, in order: one request at a time
            await self.connect()
            assert self._ws is not None
            try:
                with contextlib.suppress(ConnectionClosed):
                    # If the server already closed, a frame it sent first (CAPACITY_REACHED)
                    # says why: recv below still returns it.
                    await self._ws.send(json.dumps(frame))
                with anyio.fail_after(self.message_timeout_s):
                    reply = json.loads(await self._ws.recv())
                    # Streamed output frames come before the reply (only when asked for).
                    while on_output is not None and reply.get("type") == "output":
                        await _deliver(on_output, reply, failures)
                        reply = json.loads(await self._ws.recv())
            except ConnectionClosed as exc:
                self._ws = None
                self._broken = f"the server closed the connection ({exc}); create a new client"
                raise ServerError(self._broken) from exc
            except BaseException as exc:
                # A reply may still come and would answer the next request: drop the
                # connection (the server then interrupts the step and frees its kernel).
                await self._abandon(f"a {frame['type']} call was cancelled or timed out")
                if isinstance(exc, TimeoutError):
                    raise ServerError(
                        f"no reply to {frame['type']} within {self.message_timeout_s:g} s"
                    ) from exc
                raise
        if reply.get("type") == "error":
            data = reply.get("data") or {}
            raise ServerError(data.get("message", "unknown error"), data.get("code"))
        if failures:
            failures[0].add_note("raised by the on_output callback; the step ran to its end")
            raise failures[0]
        return reply

    async def _abandon(self, why: str) -> None:
        ws, self._ws = self._ws, None
        self._broken = f"the connection was dropped because {why}; create a new client"
        if ws is not None:
            with anyio.CancelScope(shield=True):
                await ws.close()


class SyncCodingEnv(BlockingTwin):
    """The blocking twin of :class:`CodingEnv` (same methods, no ``await``).

    It drives the async client on a private event loop thread, so it also works inside
    Jupyter, whose own loop is already running.

    Example:
        >>> with CodingEnv(base_url="http://127.0.0.1:8000").sync() as env:
        ...     env.reset()
        ...     env.step("print('hi')").observation.stdout
        'hi\\n'
    """

    def __init__(self, client: CodingEnv) -> None:
        super().__init__(client)
        self.client = client

    def __enter__(self) -> SyncCodingEnv:
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def connect(self) -> None:
        """See :meth:`CodingEnv.connect`."""
        self._call(self.client.connect)

    def reset(
        self, *, seed: int | None = None, episode_id: str | None = None, **options: Any
    ) -> StepResult:
        """See :meth:`CodingEnv.reset`."""
        return self._call(self.client.reset, seed=seed, episode_id=episode_id, **options)

    def step(
        self,
        action: Action | str,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
        on_output: OutputCallback | None = None,
        keep: bool | None = None,
    ) -> StepResult:
        """See :meth:`CodingEnv.step` (``on_output`` runs on the twin's private loop thread)."""
        return self._call(
            self.client.step,
            action,
            timeout_s=timeout_s,
            request_id=request_id,
            on_output=on_output,
            keep=keep,
        )

    def state(self) -> CodeState:
        """See :meth:`CodingEnv.state`."""
        return self._call(self.client.state)

    def mcp(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """See :meth:`CodingEnv.mcp`."""
        return self._call(self.client.mcp, method, params)



async def _deliver(
    on_output: OutputCallback, frame: dict[str, Any], failures: list[Exception]
) -> None:
    """Hand one output frame to the callback; keep reading frames if it fails."""
    if failures:
        return
    try:
        event = OutputEvent.model_validate(frame.get("data") or {})
        result = on_output(event)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:  # noqa: BLE001 - re-raised once the reply is in
        failures.append(exc)


def _step_result(reply: dict[str, Any]) -> StepResult:
    data = reply.get("data") or {}
    observation = observation_from_payload(data)
    return StepResult(
        observation=observation,
        reward=observation.reward,
        done=observation.done,
        metadata=observation.metadata,
    )

