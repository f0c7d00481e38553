"""The ``kernelenv serve`` subcommand: run the server (OpenEnv's WebSocket and HTTP protocol)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from .config import ServerConfig

from ..sandbox.config import SANDBOX_LEVELS

# option -> ServerConfig field; unset options fall back to KERNELENV_* variables, then defaults.
_OPTIONS = {
    "host": "host",
    "port": "port",
    "max_sessions": "max_sessions",
    "token": "token",
    "no_token": "no_token",
    "allow_origin": "allowed_origins",
    "allow_host": "allowed_hosts",
    "max_step_timeout": "max_step_timeout_s",
    "max_connections": "max_connections",
    "request_head_timeout": "request_head_timeout_s",
    "pool_size": "pool_size",
    "step_timeout": "step_timeout_s",
    "idle_timeout": "idle_timeout_s",
    "websocket_idle_timeout": "websocket_idle_timeout_s",
    "max_message_bytes": "max_message_bytes",
    "sandbox": "sandbox",
    "kernel_launch": "kernel_launch",
    "journal_dir": "journal_dir",
    "journal": "journal",
    "journal_fsync": "journal_fsync",
    "tasks": "tasks_dir",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kernelenv serve`` (each also settable as ``KERNELENV_<FIELD>``)."""
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--max-sessions", type=int, help="sessions allowed at once (default 64)")
    parser.add_argument(
        "--token",
        help="the token clients must send (better: KERNELENV_TOKEN); default: a random one, "
        "printed at start",
    )
    parser.add_argument(
        "--no-token", action="store_true", default=None,
        help="serve WITHOUT a token: anyone who can reach the port runs code (trusted setups only)",
    )
    parser.add_argument(
        "--allow-origin", action="append", metavar="ORIGIN",
        help="a web origin (scheme://host:port) whose pages may use the server, besides its "
        "own; repeat for more; '*' allows any",
    )
    parser.add_argument(
        "--allow-host", action="append", metavar="NAME",
        help="a Host name to serve besides localhost and IP addresses (e.g. behind a proxy); "
        "repeat for more; '*' allows any",
    )
    parser.add_argument("--pool-size", type=int, help="kernels started in advance (default 2)")
    parser.add_argument("--step-timeout", type=float, help="default step budget, s (default 30)")
    parser.add_argument(
        "--max-step-timeout", type=float,
        help="largest step budget a client can ask for, s (default 600); more is cut to it",
    )
    parser.add_argument(
        "--idle-timeout", type=float, help="close HTTP episodes idle this long, s (default 600)"
    )
    parser.add_argument(
        "--websocket-idle-timeout", type=float,
        help="close WebSocket sessions sending no frame this long, s (default 600)",
    )
    parser.add_argument(
        "--max-connections", type=int, help="open connections served at once (default 256)"
    )
    parser.add_argument(
        "--request-head-timeout", type=float,
        help="close a connection whose request headers take longer, s (default 10)",
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
        "--kernel-launch", choices=("template", "cold"),
        help="fork kernels from a template process (default) or start each cold",
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
        "--tasks", metavar="DIR",
        help="a folder of task notebooks to serve (default: the library shipped with kernelenv)",
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
    from ..errors import TaskFormatError

    try:
        tasks = len(config.task_library())
    except TaskFormatError as exc:
        print(f"kernelenv serve: {exc}", file=sys.stderr)
        return 2
    print(
        f"kernelenv serving on http://{_url_host(config.host)}:{config.port} "
        f"(WebSocket /ws, HTTP /reset /step /state, docs /docs); Ctrl-C stops",
        flush=True,
    )
    # The token goes to stdout (the user's terminal); the no-token warning to stderr (logs).
    print(access_message(config), file=sys.stdout if config.token else sys.stderr, flush=True)
    print(f"serving {tasks} tasks from {config.task_library().directory}", flush=True)
    journal_dir = config.journal_path()
    print(f"journaling episodes to {journal_dir}" if journal_dir else "journal off", flush=True)
    serve(config, log_level=args.log_level)
    return 0


def access_message(config: ServerConfig) -> str:
    """What ``kernelenv serve`` prints about the token: the playground URL that carries it,
    or a loud warning when there is none."""
    if config.token is None:
        return (
            "WARNING: serving with --no-token: any program or user that can reach this port "
            "runs code here. Use only on a trusted machine or network."
        )
    url = f"http://{_url_host(config.host)}:{config.port}"
    return (
        f"Open the playground at {url}/web/?token={quote(config.token, safe='')}\n"
        f"Clients send the header 'Authorization: Bearer {config.token}' (keep it secret; "
        "set your own with --token or KERNELENV_TOKEN)."
    )


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
