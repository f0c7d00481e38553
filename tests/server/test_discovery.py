"""A local client finds a local server's token by itself: ``kernelenv serve`` writes a server
info file (readable by its user only) while it listens, and ``kernelenv serve list`` shows it."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_server import start_plain_server, stop

from kernelenv import CodingEnv
from kernelenv.errors import ServerError
from kernelenv.server.discovery import running_servers, token_for


@pytest.fixture
def runtime(tmp_path, monkeypatch) -> Iterator[Path]:
    directory = tmp_path / "runtime"
    monkeypatch.setenv("KERNELENV_RUNTIME_DIR", str(directory))
    yield directory


def test_a_client_finds_the_token_of_a_plain_local_server(runtime):
    process, info = start_plain_server(runtime)
    try:
        assert info["pid"] == process.pid and len(info["token"]) >= 32
        info_file = runtime / f"server-{process.pid}.json"
        assert stat.S_IMODE(info_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
        # No token given: the client reads it from the server's info file.
        with CodingEnv(base_url=info["url"]).sync() as env:
            env.reset()
            assert env.step("print('hello from the server')").observation.stdout == (
                "hello from the server\n"
            )
        listed = subprocess.run(
            [sys.executable, "-m", "kernelenv", "serve", "list"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
        assert f"{info['url']}  pid {process.pid}" in listed
        assert info["token"] not in listed
        port = int(info["url"].rsplit(":", 1)[1])
        printed = subprocess.run(
            [sys.executable, "-m", "kernelenv", "serve", "token", "--port", str(port)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
        assert printed.strip() == info["token"]
        # Another address, or a host that is not this machine, gets no token.
        assert token_for(f"http://127.0.0.1:{port + 1}") is None
        assert token_for(f"http://example.org:{port}") is None
        assert token_for(f"ws://localhost:{port}/ws") == info["token"]
    finally:
        output = stop(process)
    assert not (runtime / f"server-{process.pid}.json").exists()
    assert running_servers() == []
    # The banner names the port the server really bound (it asked for port 0).
    assert f"kernelenv serving on {info['url']} " in output
    assert f"Bearer {info['token']}" in output


def test_a_killed_servers_file_is_ignored_and_a_wrong_token_still_fails(runtime):
    process, info = start_plain_server(runtime)
    process.kill()
    stop(process)
    # The dead server's file is left behind; nothing takes it for a running server.
    assert running_servers() == [] and token_for(info["url"]) is None
    assert not (runtime / f"server-{process.pid}.json").exists()
    process, info = start_plain_server(runtime)
    try:
        with pytest.raises(ServerError, match="401"):
            with CodingEnv(base_url=info["url"], token="not-the-token").sync() as env:
                env.reset()
    finally:
        stop(process)
