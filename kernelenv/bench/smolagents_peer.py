"""OpenEnv coding_env's interpreter (smolagents' LocalPythonExecutor) as a benchmark contender.

smolagents lives in its own virtual environment (created on first use), so that its
dependencies never meet kernelenv's; it is driven through a child process speaking JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SMOLAGENTS_REQUIREMENT = "smolagents>=1.20,<2"
WORKER = Path(__file__).with_name("smolagents_worker.py")


def default_venv() -> Path:
    """``.venv-smolagents`` in the source checkout kernelenv runs from, else in the cwd."""
    checkout = Path(__file__).resolve().parents[2]
    base = checkout if (checkout / "pyproject.toml").exists() else Path.cwd()
    return base / ".venv-smolagents"


def ensure_venv(venv: Path) -> Path:
    """Create ``venv`` with smolagents installed unless it is there already; return its python."""
    python = venv / "bin" / "python"
    if python.exists() and smolagents_version(python):  # e.g. made by `make bench` from the pins
        return python
    print(f"creating {venv.name} with {SMOLAGENTS_REQUIREMENT} (once)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         SMOLAGENTS_REQUIREMENT],
        check=True,
    )
    return python


def smolagents_version(python: Path) -> str | None:
    """The smolagents version installed for ``python``."""
    out = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('smolagents'))"],
        check=False, capture_output=True, text=True,
    )
    return out.stdout.strip() or None


class SmolagentsExecutor:
    """A child process running :mod:`smolagents_worker`; one cell at a time.

    Use as ``async with SmolagentsExecutor(python) as executor: await executor.run(code)``.
    """

    def __init__(self, python: Path) -> None:
        self.python = python
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> SmolagentsExecutor:
        self._process = await asyncio.create_subprocess_exec(
            str(self.python), str(WORKER),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=2**24,
        )
        await self._read()  # the worker's "ready" line
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def run(self, code: str) -> dict[str, Any]:
        """Run ``code`` in the executor; returns its stdout, return value and error."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps({"code": code}).encode() + b"\n")
        await self._process.stdin.drain()
        return await self._read()

    async def _read(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        line = await self._process.stdout.readline()
        if not line:
            raise RuntimeError("the smolagents worker exited; run it by hand to see why")
        return json.loads(line)
