"""The server's settings, from arguments or ``KERNELENV_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..sandbox.config import SandboxLevel


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
        description="If set, every route but /health needs 'Authorization: Bearer <token>' "
        "(WebSocket routes also accept '?token=<token>').",
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
    max_message_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="Largest request accepted (WebSocket frame or HTTP body), in bytes.",
    )
    sandbox: SandboxLevel = Field(
        default="auto",
        description="Kernel containment (see kernelenv.sandbox): auto is the strongest level "
        "this machine supports, and warns when that is not bwrap.",
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

    def journal_path(self) -> Path | None:
        """The journal's directory, or None when journaling is off."""
        if not self.journal:
            return None
        from ..episodes.journal import default_journal_dir

        return Path(self.journal_dir) if self.journal_dir else default_journal_dir()
