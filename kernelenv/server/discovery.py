"""Server info files: how a local client finds a local server's token, as Jupyter's do.

A running ``kernelenv serve`` writes ``server-<pid>.json`` (its URL, pid and token) into the
user's runtime directory, readable by that user only, and removes it when it stops. A client
given a loopback URL and no token reads the file of the server at that URL; ``kernelenv serve
list`` prints them. A file whose server died without removing it is ignored and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from platformdirs import user_data_path

from ..sandbox.cgroup import pid_alive

RUNTIME_DIR_VARIABLE = "KERNELENV_RUNTIME_DIR"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}


def runtime_dir() -> Path:
    """Where server info files live: ``$KERNELENV_RUNTIME_DIR``, else
    ``$XDG_RUNTIME_DIR/kernelenv``, else ``runtime`` in the user's data directory (as
    Jupyter's runtime directory; never a shared /tmp path)."""
    configured = os.environ.get(RUNTIME_DIR_VARIABLE)
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg) / "kernelenv"
    return user_data_path("kernelenv") / "runtime"


def write_server_info(url: str, token: str | None) -> Path:
    """Record this process's server at ``url``; returns the file (remove it on stop)."""
    directory = runtime_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)  # mkdir's mode is masked, and the directory may be older
    path = directory / f"server-{os.getpid()}.json"
    info = {"url": url, "pid": os.getpid(), "token": token, "started": time.time()}
    partial = directory / f".server-{os.getpid()}.json.part"
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()  # a file of an earlier process with this pid
    # Created 0600 and never followed: the token is readable by this user alone. Written
    # aside and renamed into place, so that a reader never sees it half written.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(info, out)
    os.replace(partial, path)
    return path


def running_servers() -> list[dict[str, Any]]:
    """The info of every live local server of this user, oldest first."""
    servers = []
    for path in sorted(runtime_dir().glob("server-*.json")):
        try:
            info = json.loads(path.read_text())
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(info.get("url"), str):
            continue
        if not pid_alive(pid):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        servers.append(info)
    return sorted(servers, key=lambda info: info.get("started", 0))


def token_for(base_url: str) -> str | None:
    """The token of the local server at ``base_url``, if one of this user's runs there."""
    wanted = _address(base_url)
    if wanted is None or wanted[0] not in LOOPBACK_HOSTS:
        return None
    for info in reversed(running_servers()):  # the newest first
        address = _address(info["url"])
        if address is not None and address[1] == wanted[1] and info.get("token"):
            return str(info["token"])
    return None


def url_host(host: str) -> str:
    """The host of a URL that reaches a server bound to ``host``."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _address(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        default = 443 if parts.scheme in ("https", "wss") else 80
        return (parts.hostname or "", parts.port or default)
    except ValueError:
        return None
