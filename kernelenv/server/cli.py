"""The ``kernelenv serve`` subcommand: run the server (OpenEnv's WebSocket and HTTP protocol)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from .config import ServerConfig

from ..sandbox.config import SANDBOX_LEVELS
from .discovery import running_servers, token_for, url_host

TOKEN_ON_COMMAND_LINE = (
    "--token is refused: a command line is readable by every process on this machine "
    "(/proc/<pid>/cmdline), agent code included. Set KERNELENV_TOKEN in the environment, or "
    "write the token into a file readable by you alone and pass --token-file PATH."
)

# option -> ServerConfig field; unset options fall back to KERNELENV_* variables, then defaults.
_OPTIONS = {
    "host": "host",
    "port": "port",
    "max_sessions": "max_sessions",
    "token_file": "token_file",
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
    "max_history_mb": "max_history_mb",
    "sandbox": "sandbox",
    "kernel_launch": "kernel_launch",
    "journal_dir": "journal_dir",
    "journal": "journal",
    "journal_fsync": "journal_fsync",
    "journal_max_age_days": "journal_max_age_days",
    "journal_max_files": "journal_max_files",
    "journal_max_mb": "journal_max_mb",
    "tasks": "tasks_dir",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kernelenv serve`` (each also settable as ``KERNELENV_<FIELD>``)."""
    parser.add_argument(
        "action", nargs="?", choices=["list", "token"],
        help="instead of serving: 'list' shows this user's running servers (URL and pid); "
        "'token' prints the token of this user's server on --port (default 8000), for curl",
    )
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--max-sessions", type=int, help="sessions allowed at once (default 64)")
    parser.add_argument(
        "--token-file", metavar="PATH",
        help="a file whose first line is the token clients must send (or set KERNELENV_TOKEN); "
        "default: a random one, printed at start",
    )
    # Refused (see run): a token on the command line is readable by every local process.
    parser.add_argument("--token", help=argparse.SUPPRESS)
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
        "--max-history-mb", type=int,
        help="what one episode keeps of its steps, MiB (default 32); then its steps are "
        "refused until a reset",
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
        "--journal-max-age-days", type=float,
        help="journal files older than this are removed (default 14; 0: no age bound)",
    )
    parser.add_argument(
        "--journal-max-files", type=int,
        help="the journal keeps the newest this many episode files (default 10000; 0: all)",
    )
    parser.add_argument(
        "--journal-max-mb", type=int,
        help="the journal keeps the newest files up to this many MiB (default 1024; 0: no bound)",
    )
    parser.add_argument(
        "--tasks", metavar="DIR",
        help="a folder of task notebooks to serve (default: the library shipped with kernelenv)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (or, with ``list``, show the running servers)."""
    if args.action == "list":
        return list_servers()
    if args.action == "token":
        return print_token(args.port if args.port is not None else 8000)
    if args.token is not None:
        print(f"kernelenv serve: {TOKEN_ON_COMMAND_LINE}", file=sys.stderr)
        return 2
    from pydantic import ValidationError

    from .config import ServerConfig
    from .serve import serve

    given = {
        field: getattr(args, option)
        for option, field in _OPTIONS.items()
        if getattr(args, option) is not None
    }
    try:
        config = ServerConfig(**given)
    except ValidationError as exc:
        print(f"kernelenv serve: {exc}", file=sys.stderr)
        return 2
    # Read once: kernels, templates and other children never inherit it.
    os.environ.pop("KERNELENV_TOKEN", None)
    from ..errors import TaskFormatError

    try:
        tasks = len(config.task_library())
    except TaskFormatError as exc:
        print(f"kernelenv serve: {exc}", file=sys.stderr)
        return 2

    def banner(url: str) -> None:  # once the port is bound: never a URL that serves nothing
        print(f"kernelenv serving on {url} (WebSocket /ws, HTTP /reset /step /state); "
              "Ctrl-C stops", flush=True)
        # The token goes to stdout (the user's terminal); the no-token warning to stderr.
        print(access_message(config, url), file=sys.stdout if config.token else sys.stderr,
              flush=True)
        if config.token:
            print("kernelenv's CodingEnv on this machine finds the token by itself; "
                  "`kernelenv serve list` shows running servers.", flush=True)
        print(f"serving {tasks} tasks from {config.task_library().directory}", flush=True)
        journal_dir = config.journal_path()
        print(f"journaling episodes to {journal_dir}" if journal_dir else "journal off",
              flush=True)

    serve(config, on_listening=banner, log_level=args.log_level)
    return 0


def list_servers() -> int:
    """``kernelenv serve list``: this user's running servers, one a line (no tokens: a
    client on this machine reads them itself)."""
    servers = running_servers()
    if not servers:
        print("no kernelenv server of this user is running")
    for info in servers:
        print(f"{info['url']}  pid {info['pid']}")
    return 0


def print_token(port: int) -> int:
    """``kernelenv serve token``: the token of this user's local server on ``port``."""
    token = token_for(f"http://127.0.0.1:{port}")
    if token is None:
        print(f"kernelenv serve token: no server of this user with a token runs on port {port} "
              "(`kernelenv serve list` shows them)", file=sys.stderr)
        return 1
    print(token)
    return 0


def access_message(config: ServerConfig, url: str | None = None) -> str:
    """What ``kernelenv serve`` prints about the token: the playground URL that carries it,
    or a loud warning when there is none."""
    if config.token is None:
        return (
            "WARNING: serving with --no-token: any program or user that can reach this port "
            "runs code here. Use only on a trusted machine or network."
        )
    url = url or f"http://{url_host(config.host)}:{config.port}"
    return (
        f"Open the playground at {url}/web/?token={quote(config.token, safe='')}\n"
        f"Clients send the header 'Authorization: Bearer {config.token}' (keep it secret; "
        "set your own with KERNELENV_TOKEN or --token-file)."
    )


