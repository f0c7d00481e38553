"""Keeps tokens out of the server's logs: uvicorn logs each request's path with its query."""

from __future__ import annotations

import logging
import re

# ``token=...`` in a query string (also percent-encoded inside another parameter).
_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&;\s\"'])token(?:=|%3D))[^&;\s\"']*", re.IGNORECASE)
REDACTED = "[redacted]"
# uvicorn's loggers: "uvicorn.access" logs HTTP requests, "uvicorn.error" WebSocket handshakes.
UVICORN_LOGGERS = ("uvicorn.access", "uvicorn.error")


def redact(text: str) -> str:
    """``text`` with the value of every ``token=`` query parameter replaced."""
    return _TOKEN_IN_QUERY.sub(rf"\1{REDACTED}", text)


class TokenRedactingFilter(logging.Filter):
    """A logging filter that rewrites ``token=...`` in a record's message and arguments.

    The arguments keep their positions, because uvicorn's access formatter unpacks them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                key: redact(value) if isinstance(value, str) else value
                for key, value in record.args.items()
            }
        return True


def install_token_redaction() -> None:
    """Add the filter to uvicorn's loggers (once; safe to call again)."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TokenRedactingFilter) for f in logger.filters):
            logger.addFilter(TokenRedactingFilter())
