"""The command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelenv", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_demo_runs_an_episode():
    proc = run_cli("demo", "--timeout", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Result: 8" in proc.stdout
    assert "ZeroDivisionError" in proc.stdout
    assert "status=timeout exit_code=124" in proc.stdout
    assert "x is still 8" in proc.stdout


def test_demo_without_bubblewrap_says_so_once(tmp_path):
    """The fallback is announced once, not as a log line and again as a warning."""
    import os
    import shutil
    from pathlib import Path

    for tool in ("prlimit", "setpriv", "sh"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    path = f"{tmp_path}{os.pathsep}{Path(sys.executable).parent}"
    proc = subprocess.run([sys.executable, "-m", "kernelenv", "demo", "--timeout", "1"],
                          capture_output=True, text=True, timeout=280,
                          env={**os.environ, "PATH": path})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("bubblewrap is not usable") == 1, proc.stderr


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "demo" in proc.stdout


def test_unknown_command_is_a_usage_error():
    proc = run_cli("frobnicate")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
