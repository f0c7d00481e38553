"""Fixtures of the server tests: OpenEnv's published package in a virtual env of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# OpenEnv's published package, in its own cached virtual environment: never a dependency of
# kernelenv (it pins mcp<2 and brings about 480 MB).
OPENENV_REQUIREMENT = "openenv==0.10.0"
OPENENV_VENV = Path(__file__).resolve().parents[2] / ".venv-openenv"


@pytest.fixture(scope="session")
def openenv_python() -> Path:
    """The interpreter of a virtual environment with OpenEnv's published package."""
    marker = OPENENV_VENV / f".installed-{OPENENV_REQUIREMENT}"
    python = OPENENV_VENV / "bin" / "python"
    if not marker.exists():
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(OPENENV_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             OPENENV_REQUIREMENT],
            check=True,
            timeout=900,
        )
        marker.touch()
    return python


