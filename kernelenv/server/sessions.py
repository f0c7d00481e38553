"""Live sessions of a server: one KernelEnv each, found by episode_id, limited, idle ones reaped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import anyio

from ..env import KernelEnv
from ..episodes.episode import check_episode_id
from ..episodes.journal import shared_journal
from ..errors import (
    CapacityReachedError,
    EpisodeInUseError,
    UnknownEpisodeError,
)
from ..models import CodeObservation
from ..runtime.pool import KernelPool
from .config import ServerConfig

log = logging.getLogger(__name__)

EnvFactory = Callable[[KernelPool, ServerConfig], KernelEnv]


def default_env_factory(pool: KernelPool, config: ServerConfig) -> KernelEnv:
    """A plain :class:`KernelEnv` on the server's shared pool, journaled if configured."""
    journal_dir = config.journal_path()
    journal = (
        shared_journal(journal_dir, fsync=config.journal_fsync,
                       retention=config.journal_retention())
        if journal_dir is not None
        else None
    )
    return KernelEnv(
        pool=pool,
        step_timeout_s=config.step_timeout_s,
        max_step_timeout_s=config.max_step_timeout_s,
        max_history_bytes=config.max_history_mb * 1024 * 1024,
        journal=journal,
        task_library=config.task_library(),
    )


class SessionKind(str, Enum):
    """How a session is driven, which decides how it ends."""

    WEBSOCKET = "websocket"  # ends with its connection
    HTTP = "http"  # ends on idle timeout (or server shutdown)


@dataclass(eq=False)
class Session:
    """One client's environment on the server."""

    env: KernelEnv
    kind: SessionKind
    episode_id: str | None = None
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0  # requests being served; a busy session is never reaped


class SessionManager:
    """Opens, finds and closes sessions, and keeps their number under ``max_sessions``.

    Args:
        pool: The kernel pool every session's env draws from.
        config: The server's settings (``max_sessions``, ``idle_timeout_s``, ...).
        env_factory: Makes the env of a new session (swap it to serve a KernelEnv subclass).
    """

    def __init__(
        self,
        pool: KernelPool,
        config: ServerConfig,
        env_factory: EnvFactory = default_env_factory,
    ) -> None:
        self.pool = pool
        self.config = config
        self.env_factory = env_factory
        self._sessions: set[Session] = set()
        self._by_episode: dict[str, Session] = {}

    @property
    def active_count(self) -> int:
        """Sessions open right now (WebSocket connections plus HTTP episodes)."""
        return len(self._sessions)

    @property
    def max_sessions(self) -> int:
        """The session limit."""
        return self.config.max_sessions

    def open(self, kind: SessionKind) -> Session:
        """Reserve a slot and make the session's env (no kernel until its first reset).

        Raises:
            CapacityReachedError: ``max_sessions`` sessions are already open.
        """
        if self._occupied() >= self.config.max_sessions:
            raise CapacityReachedError(self._occupied(), self.config.max_sessions)
        session = Session(env=self.env_factory(self.pool, self.config), kind=kind)
        session.env.fork_hook = self.adopt_forks
        self._sessions.add(session)
        return session

    def check_room(self, n: int) -> None:
        """Raise unless ``n`` more sessions fit under ``max_sessions``.

        Raises:
            CapacityReachedError: they do not.
        """
        if self._occupied() + n > self.config.max_sessions:
            raise CapacityReachedError(self._occupied(), self.config.max_sessions)

    def _occupied(self) -> int:
        """Open sessions, plus closed fork parents whose kernels still run for their forks."""
        return len(self._sessions) + getattr(self.pool, "hosting_count", 0)

    def adopt_forks(self, children: list[KernelEnv]) -> None:
        """File the children of a live fork as HTTP sessions, each under its episode id.

        Raises:
            CapacityReachedError: there is no room for all of them (none is filed).
        """
        self.check_room(len(children))
        for child in children:
            child.fork_hook = self.adopt_forks
            session = Session(env=child, kind=SessionKind.HTTP)
            session.episode_id = child.state.episode_id
            self._sessions.add(session)
            self._by_episode[session.episode_id] = session

    async def close(self, session: Session) -> None:
        """End the session: its kernel is released and its episode id forgotten."""
        self._unbind(session)
        self._sessions.discard(session)
        with anyio.CancelScope(shield=True):  # also when the caller is being cancelled
            await session.env.close()

    def get(self, episode_id: str) -> Session:
        """The live session running ``episode_id``.

        Raises:
            InvalidEpisodeIdError: ``episode_id`` is not a valid id.
            UnknownEpisodeError: no live session runs that episode.
        """
        session = self._by_episode.get(check_episode_id(episode_id))
        if session is None:
            raise UnknownEpisodeError(
                f"no live episode has id {episode_id!r}: it never existed, was closed, or was "
                f"idle for more than {self.config.idle_timeout_s:g} s; call reset to start one"
            )
        return session

    def find(self, episode_id: str) -> Session | None:
        """The live session running ``episode_id``, or None.

        Raises:
            InvalidEpisodeIdError: ``episode_id`` is not a valid id.
        """
        return self._by_episode.get(check_episode_id(episode_id))

    def check_free(self, episode_id: str | None, session: Session) -> None:
        """Raise unless ``session`` may start an episode called ``episode_id``.

        Raises:
            EpisodeInUseError: another live session runs an episode with that id.
        """
        owner = self._by_episode.get(episode_id) if episode_id else None
        if owner is not None and owner is not session:
            raise EpisodeInUseError(
                f"episode id {episode_id!r} is in use by another live session; "
                "choose another id or omit it"
            )

    def check_http(self, session: Session) -> None:
        """Raise unless ``session`` is an HTTP session (WebSocket ones belong to a connection).

        Raises:
            EpisodeInUseError: the session belongs to a WebSocket connection.
        """
        if session.kind is not SessionKind.HTTP:
            raise EpisodeInUseError(
                f"episode {session.episode_id!r} belongs to a WebSocket connection; "
                "it cannot be driven over HTTP"
            )

    def track_episode(self, session: Session) -> None:
        """Re-file ``session`` under its env's current episode id (after a reset done directly
        on the env, e.g. by an MCP tool)."""
        episode_id = self._live_episode_id(session)
        if episode_id == session.episode_id:
            return
        self._unbind(session)
        if episode_id is not None and episode_id not in self._by_episode:
            self._by_episode[episode_id] = session
            session.episode_id = episode_id

    def env(self, episode_id: str) -> KernelEnv:
        """The env running ``episode_id`` (see :meth:`get`)."""
        return self.get(episode_id).env

    def sessions(self) -> list[Session]:
        """A snapshot of the open sessions."""
        return list(self._sessions)

    async def reset(
        self,
        session: Session,
        *,
        seed: int | None = None,
        episode_id: str | None = None,
        **options: Any,
    ) -> CodeObservation:
        """Start a new episode in ``session`` under ``episode_id`` (default: a fresh id).

        Raises:
            EpisodeInUseError: another session runs an episode with that id.
        """
        episode_id = check_episode_id(episode_id) if episode_id else uuid.uuid4().hex
        self.check_free(episode_id, session)
        self._unbind(session)
        # Bound before the await so a concurrent reset cannot claim the same id.
        self._by_episode[episode_id] = session
        session.episode_id = episode_id
        try:
            return await session.env.reset(seed=seed, episode_id=episode_id, **options)
        except BaseException:
            self._unbind(session)
            raise

    async def reset_http(
        self, *, seed: int | None = None, episode_id: str | None = None, **options: Any
    ) -> tuple[Session, CodeObservation]:
        """Reset the HTTP episode named ``episode_id`` in place, or open a new HTTP session.

        Raises:
            CapacityReachedError: a new session is needed and the server is full.
            EpisodeInUseError: the id belongs to a WebSocket session.
        """
        existing = self._by_episode.get(episode_id) if episode_id else None
        if existing is not None:
            self.check_http(existing)
        session = existing or self.open(SessionKind.HTTP)
        try:
            with self.using(session):
                observation = await self.reset(
                    session, seed=seed, episode_id=episode_id, **options
                )
        except BaseException:
            if existing is None:
                await self.close(session)
            raise
        return session, observation

    @contextlib.contextmanager
    def using(self, session: Session) -> Iterator[Session]:
        """Mark ``session`` busy (never reaped) for the duration of a request."""
        session.in_flight += 1
        session.last_used = time.monotonic()
        try:
            yield session
        finally:
            session.in_flight -= 1
            session.last_used = time.monotonic()

    async def reap_idle(self) -> int:
        """Close HTTP sessions idle for longer than ``idle_timeout_s``; return how many."""
        deadline = time.monotonic() - self.config.idle_timeout_s
        idle = [
            s
            for s in self._sessions
            if s.kind is SessionKind.HTTP and not s.in_flight and s.last_used < deadline
        ]
        for session in idle:
            log.info("closing idle HTTP episode %s", session.episode_id)
            await self.close(session)
        return len(idle)

    async def run_reaper(self) -> None:
        """Reap idle HTTP sessions forever (run as a background task of the app; WebSocket
        connections reap themselves, see ``kernelenv.server.ws``)."""
        interval = min(self.config.idle_timeout_s / 4, 30.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_idle()
            except Exception:  # a failed close must not stop reaping
                log.exception("reaping idle sessions failed")

    async def aclose(self) -> None:
        """Close every session (at server shutdown)."""
        for session in list(self._sessions):
            await self.close(session)

    @staticmethod
    def _live_episode_id(session: Session) -> str | None:
        episode = session.env.episode
        return episode.episode_id if episode is not None else None

    def _unbind(self, session: Session) -> None:
        if session.episode_id is not None and self._by_episode.get(session.episode_id) is session:
            del self._by_episode[session.episode_id]
        session.episode_id = None
