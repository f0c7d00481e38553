"""OpenEnv's published clients (PyPI ``openenv`` 0.10.0) and ``openenv validate`` on our server.

``openenv`` is never a dependency of kernelenv: the test installs it into its own virtual
environment, ``.venv-openenv`` at the repository root (gitignored), kept between runs.

The clients send the server's token in the ``headers`` OpenEnv's ``EnvClient`` takes;
``openenv validate`` cannot send one, so it checks a ``no_token`` server on loopback.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernelenv.server import ServerConfig, ServerThread

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "openenv_clients.py"


TOKEN = "openenv-compat-token"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(ServerConfig(port=0, pool_size=2, token=TOKEN)) as server:
        yield server


def run_in_openenv(openenv_python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(openenv_python), *args], capture_output=True, text=True, timeout=180, cwd=REPO
    )


def test_openenv_clients_drive_the_server(openenv_python, server):
    run = run_in_openenv(openenv_python, str(DRIVER), server.base_url, TOKEN)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)

    generic = report["generic"]
    assert generic["reset_keys"] == ["exit_code", "metadata", "stderr", "stdout"]
    assert generic["stdout"] == "40\n" and generic["return_value"] == "21"
    # An error frame reaches OpenEnv's client as its RuntimeError; the session goes on.
    assert "VALIDATION_ERROR" in generic["bad"] and "code" in generic["bad"]
    assert generic["after_bad_return_value"] == "20"
    assert generic["state"]["episode_id"] == "generic-episode"
    assert generic["state"]["step_count"] == 3 and generic["state"]["seed"] == 5

    typed = report["typed"]  # its observation model forbids unknown keys
    assert typed["stdout"] == "12.57\n" and typed["exit_code"] == 0
    assert typed["failing_exit_code"] == 1 and "ZeroDivisionError" in typed["failing_stderr"]
    assert typed["state"]["episode_id"] == "typed-episode"
    assert typed["state"]["step_count"] == 3 and typed["state"]["last_exit_code"] == 1

    # Both clients closed their sessions: the server released them.
    deadline = time.monotonic() + 10
    while server.app.state.sessions.active_count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.app.state.sessions.active_count == 0


def test_openenv_clients_without_the_token_are_refused(openenv_python, server):
    run = run_in_openenv(openenv_python, str(DRIVER), server.base_url)
    assert run.returncode != 0 and "401" in run.stderr
    assert server.app.state.sessions.active_count == 0


def test_openenv_validate_passes(openenv_python):
    openenv_cli = openenv_python.parent / "openenv"
    with ServerThread(ServerConfig(port=0, pool_size=0, no_token=True)) as server:
        run = subprocess.run(
            [str(openenv_cli), "validate", server.base_url, "--json"],
            capture_output=True, text=True, timeout=180, cwd=REPO,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["passed"] is True and report["mode"] == "simulation"
    assert {c["id"] for c in report["criteria"]} >= {
        "openapi_version_available", "health_endpoint", "metadata_endpoint",
        "schema_endpoint", "mcp_endpoint", "mode_endpoint_consistency",
    }
