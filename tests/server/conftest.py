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




def check_server_sound(base_url: str, token: str | None = None) -> None:
    """After an attack: the server answers /health, and a new episode runs ``1+1``."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as http:
        health = http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        reset = http.post("/reset", json={})
        assert reset.status_code == 200, reset.text
        episode_id = reset.json()["episode_id"]
        step = http.post("/step", json={"episode_id": episode_id, "action": {"code": "1+1"}})
        assert step.status_code == 200, step.text
        assert step.json()["observation"]["metadata"]["kernelenv"]["return_value"] == "2"
        assert http.post("/close", json={"episode_id": episode_id}).status_code == 200


@pytest.fixture
def server_sound():
    """``check_server_sound(base_url, token)``: /health answers and a new episode runs 1+1."""
    return check_server_sound
