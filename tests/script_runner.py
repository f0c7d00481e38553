"""Run a Python script as a user would, in its own interpreter, and see what it leaves behind.

Used by the tests of plain scripts (tests/test_script_exit.py) and of the README's snippets
(tests/test_readme.py): a script that fails, prints a traceback, never exits, or leaves a kernel
process or a pool directory behind fails its test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from kernelenv.runtime.pool import ROOT_PREFIX

# Generous: a script starts kernels on a shared, loaded machine. This bounds a hang (the bug
# these tests exist for) and is no claim about speed.
EXIT_LIMIT_S = 180.0


@dataclass
class ScriptRun:
    """What a script did: its exit code, its output, and what it left behind."""

    returncode: int
    stdout: str
    stderr: str
    leftover_processes: list[str] = field(default_factory=list)
    leftover_pool_dirs: list[Path] = field(default_factory=list)

    def assert_clean(self) -> None:
        """Exit code 0, no traceback on stderr, no process and no pool directory left."""
        assert self.returncode == 0, f"exit code {self.returncode}\n{self.stderr}"
        self.assert_nothing_left()

    def assert_nothing_left(self) -> None:
        """No traceback printed by our clean-up, no process and no pool directory left."""
        assert "Exception ignored" not in self.stderr, self.stderr
        assert not self.leftover_processes, f"processes left: {self.leftover_processes}"
        assert not self.leftover_pool_dirs, f"pool directories left: {self.leftover_pool_dirs}"


def run_script(
    source: str,
    workdir: Path,
    *,
    name: str = "script.py",
    env: dict[str, str] | None = None,
    limit_s: float = EXIT_LIMIT_S,
    python: Path | None = None,
) -> ScriptRun:
    """Write ``source`` to ``workdir/name`` and run it from ``workdir`` with ``python`` (by
    default this interpreter), its venv's scripts first on ``PATH``.

    The script gets a temporary directory of its own (``TMPDIR``), so its pool directories and
    every process it started (kernels, servers) can be told apart from everyone else's.

    Raises:
        AssertionError: the script did not exit within ``limit_s`` (it is killed).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    # Short, under the system's temporary directory: kernel sockets live below it, and a Unix
    # socket's path must stay under 108 bytes.
    tmpdir = Path(tempfile.mkdtemp(prefix="ke-"))
    try:
        return _run(source, workdir, tmpdir, name=name, env=env, limit_s=limit_s,
                    python=Path(python or sys.executable))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _run(
    source: str,
    workdir: Path,
    tmpdir: Path,
    *,
    name: str,
    env: dict[str, str] | None,
    limit_s: float,
    python: Path,
) -> ScriptRun:
    path = workdir / name
    path.write_text(source)
    run_env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1", **(env or {})}
    # The venv's scripts (kernelenv, python) first, as in an activated venv.
    bin_dir = os.path.abspath(workdir / python.parent)  # python may be relative to workdir
    run_env["PATH"] = f"{bin_dir}{os.pathsep}{run_env.get('PATH', '')}"
    process = subprocess.Popen(
        [str(python), str(path)],
        cwd=workdir,
        env=run_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        _kill_everything_of(process.pid, tmpdir)
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"{name} did not exit within {limit_s:g} s\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ) from None
    processes = _wait_for_none_of(tmpdir, grace_s=10.0)
    leftovers = [_command(p) for p in processes]
    _kill_everything_of(None, tmpdir)  # never leave them to the next test, even when failing
    return ScriptRun(
        returncode=process.returncode,
        stdout=stdout,
        stderr=stderr,
        leftover_processes=leftovers,
        leftover_pool_dirs=sorted(tmpdir.glob(ROOT_PREFIX + "*")),
    )


def _processes_of(tmpdir: Path) -> list[psutil.Process]:
    """Live processes started by a script that ran with ``TMPDIR=tmpdir``."""
    found = []
    for proc in psutil.process_iter():
        try:
            mine = proc.environ().get("TMPDIR") == str(tmpdir)
            if mine and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _wait_for_none_of(tmpdir: Path, grace_s: float) -> list[psutil.Process]:
    # A process being killed at the script's exit may take a moment to be gone.
    deadline = time.monotonic() + grace_s
    while (left := _processes_of(tmpdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _kill_everything_of(pid: int | None, tmpdir: Path) -> None:
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    for proc in _processes_of(tmpdir):
        try:
            proc.kill()
        except psutil.Error:
            pass


def _command(process: psutil.Process) -> str:
    """The start of its command line (a process may exit while we look)."""
    try:
        return " ".join(process.cmdline()[:4])
    except psutil.Error:
        return f"pid {process.pid} (exited meanwhile)"
