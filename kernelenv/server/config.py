"""The server's settings, from arguments or ``KERNELENV_*`` environment variables."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..episodes.retention import DEFAULT_MAX_AGE_DAYS, DEFAULT_MAX_FILES, DEFAULT_MAX_MB
from ..sandbox.config import SandboxLevel

if TYPE_CHECKING:
    from ..episodes.retention import Retention
    from ..tasks.library import TaskLibrary


class ServerConfig(BaseSettings):
    """Settings of a kernelenv server.

    Every field can also be set with an environment variable named ``KERNELENV_`` plus the
    field name in capitals (``KERNELENV_MAX_SESSIONS=128``); explicit values win.
    """

    model_config = SettingsConfigDict(env_prefix="KERNELENV_", extra="ignore")

    host: str = Field(
        default="127.0.0.1",
        description="Interface to bind; 127.0.0.1 keeps the server private to this machine.",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on.")
    max_sessions: int = Field(
        default=64,
        ge=1,
        description="Live sessions (WebSocket connections plus HTTP episodes) allowed at once.",
    )
    token: str | None = Field(
        default=None,
        min_length=1,
        description="Every route but /health needs 'Authorization: Bearer <token>' (a "
        "WebSocket may also carry it as '?token=' or the 'kernelenv.bearer.<token>' "
        "subprotocol). Unset: a random token is made at start (see no_token).",
    )
    token_file: str | None = Field(
        default=None,
        description="A file holding the token (its first line), so the token is on no command "
        "line (where every process of the machine reads it in /proc/<pid>/cmdline).",
    )
    no_token: bool = Field(
        default=False,
        description="Serve without any token: anyone who can reach the port runs code. Only "
        "for trusted setups (a loopback test, a private network); Origin and Host checks stay.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Web origins (scheme://host:port) besides the server's own whose pages may "
        "open /ws and send state-changing requests; '*' allows any.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header names served besides localhost, loopback and IP addresses "
        "(and the bind host); '*' allows any. Others are refused, which stops DNS rebinding.",
    )
    max_step_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="The largest step budget a client can get: a larger timeout_s is cut to "
        "it, and the observation's metadata['step_timeout_clamped'] says so.",
    )
    max_connections: int = Field(
        default=256,
        ge=1,
        description="Open connections (HTTP and WebSocket) served at once; more get 503.",
    )
    request_head_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A client has this long to send a request's line and headers, and each "
        "body chunk; then its connection is closed.",
    )
    max_history_mb: int = Field(
        default=32,
        ge=1,
        description="What one episode keeps of its steps (code and observations), in MiB; "
        "then its steps are refused until a reset. With max_sessions, this bounds the memory "
        "episodes take in the server (64 x 32 MiB by default).",
    )
    pool_size: int = Field(
        default=2, ge=0, description="Kernels kept started in advance, so reset does not wait."
    )
    step_timeout_s: float = Field(
        default=30.0, gt=0, description="Default wall-clock budget of a step, in seconds."
    )
    idle_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="HTTP episodes unused for this many seconds are closed, their kernels freed.",
    )
    websocket_idle_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="WebSocket connections that send no frame for this many seconds (while "
        "no step runs) are closed with code 1001, their kernels freed.",
    )
    max_message_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="Largest request accepted (WebSocket message or HTTP body), in bytes; a "
        "larger WebSocket message closes the connection (code 1009).",
    )
    sandbox: SandboxLevel = Field(
        default="auto",
        description="Kernel containment (see kernelenv.sandbox): auto is the strongest level "
        "this machine supports, and warns when that is not bwrap.",
    )
    kernel_launch: Literal["template", "cold"] = Field(
        default="template",
        description="How kernels start: forked from a template process that did the imports "
        "and IPython's start-up once (tens of ms), or cold (about 0.5 s each).",
    )
    journal: bool = Field(
        default=True,
        description="Record every episode as it runs, each step made durable before it is "
        "returned, so `kernelenv recover` rebuilds the episodes of a server that died.",
    )
    journal_dir: str | None = Field(
        default=None,
        description="Where the journal goes (default: journal/ in the user's state directory).",
    )
    journal_fsync: bool = Field(
        default=False,
        description="fsync each journaled step, so it also survives a crash of the machine "
        "(a few ms a step); without it, steps still survive the server being killed.",
    )
    # The journal's retention (pruned as episodes end; 0 lifts a bound): an RL run's millions
    # of episodes must not become millions of files.
    journal_max_age_days: float = Field(
        default=DEFAULT_MAX_AGE_DAYS, ge=0,
        description="Journal files older than this go (0: no age bound).",
    )
    journal_max_files: int = Field(
        default=DEFAULT_MAX_FILES, ge=0,
        description="The journal keeps the newest this many files (0: all).",
    )
    journal_max_mb: int = Field(
        default=DEFAULT_MAX_MB, ge=0,
        description="The journal keeps the newest files up to this many MiB (0: no bound).",
    )

    @model_validator(mode="after")
    def _check(self) -> ServerConfig:
        if self.token_file is not None:
            if self.token is not None:
                raise ValueError("give either a token or token_file, not both")
            self.token = read_token_file(self.token_file)
        if self.no_token and self.token is not None:
            raise ValueError("give either a token or no_token, not both")
        if self.token is None and not self.no_token:
            # As Jupyter Server does: no token configured means a fresh random one.
            self.token = secrets.token_urlsafe(32)
        if self.step_timeout_s > self.max_step_timeout_s:
            raise ValueError(
                f"step_timeout_s ({self.step_timeout_s:g}) is above max_step_timeout_s "
                f"({self.max_step_timeout_s:g})"
            )
        return self

    tasks_dir: str | None = Field(
        default=None,
        description="A folder of task notebooks served by /tasks, /grader, reset(task_id=...) "
        "and MCP (default: the library shipped with kernelenv).",
    )

    def task_library(self) -> TaskLibrary:
        """The library of ``tasks_dir`` (shared per folder)."""
        from ..tasks.library import library_at

        return library_at(self.tasks_dir)

    def journal_retention(self) -> Retention:
        """What the journal keeps, from the ``journal_max_*`` settings."""
        from ..episodes.retention import Retention

        return Retention.from_settings(
            self.journal_max_age_days, self.journal_max_files, self.journal_max_mb
        )

    def journal_path(self) -> Path | None:
        """The journal's directory, or None when journaling is off."""
        if not self.journal:
            return None
        from ..episodes.journal import default_journal_dir

        return Path(self.journal_dir) if self.journal_dir else default_journal_dir()


def read_token_file(path: str) -> str:
    """The token in the first line of ``path`` (surrounding whitespace removed)."""
    try:
        with open(path, encoding="utf-8") as file:
            token = file.readline().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path}: {exc.strerror}") from exc
    if not token:
        raise ValueError(f"the token file {path} is empty: write the token on its first line")
    return token
