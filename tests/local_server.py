"""A ``kernelenv serve`` subprocess, as a user starts it: a port the OS picks (no
bind-then-close race), found through the server info file it writes once it listens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start_plain_server(
    runtime: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, dict]:
    """Start ``kernelenv serve --port 0 ARGS`` with ``KERNELENV_RUNTIME_DIR=runtime`` (and its
    own random token unless ARGS or ``env`` say otherwise); return the process and its server
    info (``url``, ``pid``, ``token``) once it listens. Its output (stdout and stderr) goes to
    a file (never a pipe nobody reads, which would block it); :func:`stop` returns it."""
    given = env or {}
    env = {**os.environ, "KERNELENV_RUNTIME_DIR": str(runtime), "KERNELENV_POOL_SIZE": "1"}
    env.pop("KERNELENV_TOKEN", None)
    env.update(given)
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "kernelenv", "serve", "--port", "0", "--no-journal",
         "--log-level", "warning", *args],
        stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
    )
    process.log = log  # type: ignore[attr-defined]
    info_file = runtime / f"server-{process.pid}.json"
    deadline = time.monotonic() + 120
    while not info_file.exists():  # written once the socket is bound
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the server wrote no info file:\n{stop(process)}")
        time.sleep(0.05)
    return process, json.loads(info_file.read_text())


def stop(process: subprocess.Popen) -> str:
    """Stop the server as Ctrl-C does (if it still runs); return what it printed."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log = process.log  # type: ignore[attr-defined]
    log.seek(0)
    output = log.read()
    log.close()
    return output
