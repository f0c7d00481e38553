"""Fixtures of the server tests: OpenEnv's published package in a virtual env of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from peers import peer_python

@pytest.fixture(scope="session")
def openenv_python() -> Path:
    """The interpreter of ``.venv-openenv``: OpenEnv's published package (0.10, pinned in
    requirements/openenv.txt), never a dependency of kernelenv (it pins mcp<2)."""
    return peer_python("openenv")




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
