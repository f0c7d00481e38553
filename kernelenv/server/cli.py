"""The ``kernelenv serve`` subcommand: run the server (OpenEnv's WebSocket and HTTP protocol)."""

from __future__ import annotations

import argparse

from ..sandbox.config import SANDBOX_LEVELS

# option -> ServerConfig field; unset options fall back to KERNELENV_* variables, then defaults.
_OPTIONS = {
    "host": "host",
    "port": "port",
    "max_sessions": "max_sessions",
    "token": "token",
    "pool_size": "pool_size",
    "step_timeout": "step_timeout_s",
    "idle_timeout": "idle_timeout_s",
    "max_message_bytes": "max_message_bytes",
    "sandbox": "sandbox",
    "journal_dir": "journal_dir",
    "journal": "journal",
    "journal_fsync": "journal_fsync",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kernelenv serve`` (each also settable as ``KERNELENV_<FIELD>``)."""
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--max-sessions", type=int, help="sessions allowed at once (default 64)")
    parser.add_argument(
        "--token", help="require 'Authorization: Bearer TOKEN' (better: KERNELENV_TOKEN)"
    )
    parser.add_argument("--pool-size", type=int, help="kernels started in advance (default 2)")
    parser.add_argument("--step-timeout", type=float, help="default step budget, s (default 30)")
    parser.add_argument(
        "--idle-timeout", type=float, help="close HTTP episodes idle this long, s (default 600)"
    )
    parser.add_argument(
        "--max-message-bytes", type=int, help="largest request accepted (default 1 MiB)"
    )
    parser.add_argument(
        "--sandbox",
        choices=SANDBOX_LEVELS,
        help="kernel containment (default auto: the strongest available, bwrap)",
    )
    parser.add_argument(
        "--journal-dir", help="journal directory for `kernelenv recover` (default: user state dir)"
    )
    parser.add_argument(
        "--no-journal", dest="journal", action="store_false", default=None,
        help="do not journal episodes (a crash then loses them)",
    )
    parser.add_argument(
        "--journal-fsync", action="store_true", default=None,
        help="fsync every journaled step, so it survives a crash of the machine too "
        "(costs one fsync a step; without it steps survive the server being killed)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from .config import ServerConfig
    from .serve import serve

    given = {
        field: getattr(args, option)
        for option, field in _OPTIONS.items()
        if getattr(args, option) is not None
    }
    config = ServerConfig(**given)
    print(
        f"kernelenv serving on http://{config.host}:{config.port} "
        f"(WebSocket /ws, HTTP /reset /step /state, docs /docs); Ctrl-C stops",
        flush=True,
    )
    journal_dir = config.journal_path()
    print(f"journaling episodes to {journal_dir}" if journal_dir else "journal off", flush=True)
    serve(config, log_level=args.log_level)
    return 0
