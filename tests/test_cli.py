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


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "demo" in proc.stdout


def test_unknown_command_is_a_usage_error():
    proc = run_cli("frobnicate")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
