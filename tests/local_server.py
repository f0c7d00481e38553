"""A plain ``kernelenv serve`` subprocess, as a user starts it: its own random token, a port the
OS picks (no bind-then-close race), found through its server info file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def start_plain_server(runtime: Path, *args: str) -> tuple[subprocess.Popen, dict]:
    """Start ``kernelenv serve --port 0 ARGS`` with ``KERNELENV_RUNTIME_DIR=runtime``; return
    the process and its server info (``url``, ``pid``, ``token``) once it listens."""
    env = {**os.environ, "KERNELENV_RUNTIME_DIR": str(runtime), "KERNELENV_POOL_SIZE": "1"}
    env.pop("KERNELENV_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "kernelenv", "serve", "--port", "0", "--no-journal",
         "--log-level", "warning", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    info_file = runtime / f"server-{process.pid}.json"
    deadline = time.monotonic() + 60
    while not info_file.exists():  # written once the socket is bound
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise AssertionError(f"the server wrote no info file:\n{process.stdout.read()}")
        time.sleep(0.05)
    return process, json.loads(info_file.read_text())


def stop(process: subprocess.Popen) -> str:
    """Stop the server as Ctrl-C does; return what it printed."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output
