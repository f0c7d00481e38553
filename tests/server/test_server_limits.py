"""Attacks on the server's resources: oversized and pipelined frames, slow request heads and
bodies, budgets above the maximum, idle sockets, too many connections. Real servers on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from local_server import start_plain_server, stop
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response
from websockets.uri import parse_uri

from kernelenv.server import ServerConfig, ServerThread

pytestmark = pytest.mark.anyio

MAX_MESSAGE_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = ServerConfig(
        port=0, pool_size=1, no_token=True, max_message_bytes=MAX_MESSAGE_BYTES,
        step_timeout_s=1.0, max_step_timeout_s=5.0, request_head_timeout_s=1.0,
        websocket_idle_timeout_s=1.5,
    )  # fmt: skip
    with ServerThread(config) as server:
        yield server


def ws_url(server: ServerThread) -> str:
    return server.base_url.replace("http", "ws") + "/ws"


def wait_for_no_sessions(server: ServerThread) -> None:
    deadline = time.monotonic() + 30
    while server.app.state.sessions.active_count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.app.state.sessions.active_count == 0


async def test_a_message_over_the_limit_closes_the_socket(server, server_sound):
    async with connect(ws_url(server), max_size=None) as ws:
        # Exactly the limit is served.
        frame = {"type": "state", "pad": ""}
        frame["pad"] = "x" * (MAX_MESSAGE_BYTES - len(json.dumps(frame)))
        assert len(json.dumps(frame)) == MAX_MESSAGE_BYTES
        await ws.send(json.dumps(frame))
        assert json.loads(await ws.recv())["type"] == "state"
        # One byte more closes the connection: the frame is never buffered whole.
        frame["pad"] += "x"
        await ws.send(json.dumps(frame))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    wait_for_no_sessions(server)
    server_sound(server.base_url)


def test_pipelined_frames_are_not_read_ahead(server_sound):
    """Connections pipeline 1 MiB frames behind a long step: the server stops reading each
    socket after a few frames, so its memory stays bounded whatever the clients send."""
    connections, frame_bytes, offered = 6, 1 << 20, 48 << 20
    with served("--pool-size", "2", "--max-sessions", "8") as (process, base, port):
        server = psutil.Process(process.pid)
        sockets: list[socket.socket] = []
        try:
            before = server.memory_info().rss
            frames = []
            for _ in range(connections):
                sock, protocol = _open_raw_websocket(port)
                sockets.append(sock)
                _send_frame(sock, protocol, {"type": "reset", "data": {}})
                # Long enough to outlast the sending; the closed sockets' sessions end with it
                # (a socket the server stopped reading shows its close only then).
                _send_frame(sock, protocol, {"type": "step", "data": {
                    "code": "import time; time.sleep(18)", "timeout_s": 60}})
                padding = {"type": "state", "pad": ""}
                padding["pad"] = "x" * (frame_bytes - len(json.dumps(padding)))
                protocol.send_text(json.dumps(padding).encode())
                # One masked frame, sent again and again.
                frames.append(b"".join(protocol.data_to_send()))
            # All connections at once: each waits 3 s to be sure it is no longer read.
            with ThreadPoolExecutor(connections) as senders:
                accepted = list(senders.map(
                    lambda sock, frame: _send_until_refused(sock, frame, offered), sockets, frames
                ))  # fmt: skip
            grown = server.memory_info().rss - before
            # Each socket stopped being read.
            assert all(sent < offered for sent in accepted), accepted
            # Per connection: READ_AHEAD + 1 frames waiting, one being parsed, decoding copies
            # (about 5 MiB measured). Reading 16 frames ahead, the server grew by about 120 MiB.
            bound = connections * 8 * frame_bytes
            assert grown < bound, f"server grew by {grown >> 20} MiB (bound {bound >> 20} MiB)"
        finally:
            for sock in sockets:
                sock.close()
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/health").json()["active_sessions"]:
            assert time.monotonic() < deadline, "sessions of closed sockets were not released"
            time.sleep(0.1)
        server_sound(base)


async def test_an_episode_printing_a_megabyte_a_step_does_not_grow_the_server(server_sound):
    """Every step is kept for export, grading and retries: past --max-history-mb, steps are
    refused until a reset, so one episode cannot fill the server's memory."""
    steps = 60
    with served("--pool-size", "1", "--max-history-mb", "4") as (process, base, _):
        server = psutil.Process(process.pid)
        async with connect(base.replace("http", "ws") + "/ws", max_size=None) as ws:
            await ws.send(json.dumps({"type": "reset", "data": {}}))
            await ws.recv()
            before = server.memory_info().rss
            statuses = []
            for _ in range(steps):  # 1 MB of output a step: without the cap, 2 MB kept a step
                await ws.send(json.dumps({"type": "step", "data": {"code": "print('x' * 10**6)"}}))
                data = json.loads(await ws.recv())["data"]
                statuses.append((data["metadata"]["kernelenv"]["status"], data["done"]))
            grown = server.memory_info().rss - before
            assert statuses[0] == ("ok", False)
            assert statuses[-1] == ("aborted", True)
            assert statuses.count(("ok", False)) <= 3  # 4 MiB: two or three steps of 2 MB
            assert grown < 32 << 20, f"server grew by {grown >> 20} MiB over {steps} steps"
            await ws.send(json.dumps({"type": "reset", "data": {}}))  # a new episode steps again
            await ws.recv()
            await ws.send(json.dumps({"type": "step", "data": {"code": "6 * 7"}}))
            data = json.loads(await ws.recv())["data"]
            assert data["metadata"]["kernelenv"]["return_value"] == "42"
        server_sound(base)


CRAFTED_DISPLAYS = """
k = get_ipython().kernel
for _ in range(5):  # 1.8 MB of JSON each, 25 MB of Python lists once decoded
    k.session.send(k.iopub_socket, 'display_data',
                   {'data': {}, 'metadata': {'m': [[]] * 450000}, 'transient': {}},
                   parent=k.get_parent())
"""
CRAFTED_TOOL_CALLS = """
for _ in range(5):  # each call's argument: 2 MB of JSON, 28 MB of Python lists once decoded
    try:
        fetch_orders(cursor=[[]] * 500000)
    except Exception:
        pass
"""


@pytest.mark.parametrize("attack", ["displays", "tool_calls"])
async def test_crafted_outputs_and_tool_calls_count_what_they_hold(attack, server_sound):
    """Found by an outside attack: caps counted characters, so empty lists in an output's
    metadata or in a tool call's arguments were kept uncounted (3.4 GB in 20 steps)."""
    code = CRAFTED_DISPLAYS if attack == "displays" else CRAFTED_TOOL_CALLS
    reset = {} if attack == "displays" else {"task_id": "multi_step_easy_pagination"}
    with served("--pool-size", "1", "--max-history-mb", "8") as (process, base, _):
        server = psutil.Process(process.pid)
        async with connect(base.replace("http", "ws") + "/ws", max_size=None) as ws:
            await ws.send(json.dumps({"type": "reset", "data": reset}))
            await ws.recv()
            before = server.memory_info().rss
            # Each message holds 25 MB once decoded: kept uncounted, a step of five outgrows
            # the bound alone (six steps took over a minute on a loaded machine; three will do).
            for _ in range(3):
                # A generous budget: decoding each 2 MB call takes a while on a loaded machine.
                step = {"code": code, "timeout_s": 60}
                await ws.send(json.dumps({"type": "step", "data": step}))
                data = json.loads(await ws.recv())["data"]
                assert data["metadata"]["kernelenv"]["status"] in ("ok", "aborted")
            grown = server.memory_info().rss - before
            assert grown < 96 << 20, f"server grew by {grown >> 20} MiB over 3 steps"
        server_sound(base)


def test_slow_request_heads_are_disconnected(server, server_sound):
    slow = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        sock.sendall(b"GET /health HT")  # half a request line, then nothing
        slow.append(sock)
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    slow.append(silent)
    try:
        # Meanwhile the server serves everyone else.
        assert httpx.get(f"{server.base_url}/health").status_code == 200
        for sock in slow:
            assert sock.recv(1024) == b"", "the server should close a connection whose head stalls"
    finally:
        for sock in slow:
            sock.close()
    server_sound(server.base_url)


def test_a_stalled_body_gets_a_408(server, server_sound):
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(
            b"POST /reset HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"seed\": "
        )
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "stalled" in reply
    assert server.app.state.sessions.active_count == 0
    server_sound(server.base_url)


async def test_a_budget_above_the_maximum_is_cut_and_said(server, server_sound):
    sleeper = "import time; time.sleep(30)"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
        episode_id = (await http.post("/reset", json={})).json()["episode_id"]
        reply = await http.post("/step", json={
            "episode_id": episode_id, "timeout_s": 1000, "action": {"code": sleeper}})
        observation = reply.json()["observation"]
        assert observation["exit_code"] == 124  # stopped at the server's maximum, not at 1000 s
        assert observation["metadata"]["step_timeout_clamped"] == {
            "requested_s": 1000.0, "max_step_timeout_s": 5.0}
        await http.post("/close", json={"episode_id": episode_id})
    async with connect(ws_url(server)) as ws:  # the same for a WebSocket step's own budget
        await ws.send(json.dumps({"type": "reset", "data": {}}))
        await ws.recv()
        await ws.send(json.dumps({"type": "step", "data": {"code": sleeper, "timeout_s": 500}}))
        metadata = json.loads(await ws.recv())["data"]["metadata"]
        assert metadata["step_timeout_clamped"]["requested_s"] == 500.0
        assert metadata["kernelenv"]["status"] == "timeout"
    wait_for_no_sessions(server)
    server_sound(server.base_url)


async def test_an_idle_websocket_is_closed_but_a_long_step_is_not_idleness(server, server_sound):
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"type": "reset", "data": {}}))
        await ws.recv()
        # A step longer than the idle timeout (within the step budget) is served.
        await ws.send(json.dumps({"type": "step", "data": {
            "code": "import time; time.sleep(3); 'done'", "timeout_s": 5}}))
        reply = json.loads(await ws.recv())
        assert reply["data"]["metadata"]["kernelenv"]["return_value"] == "'done'"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()  # then nothing: the server closes the connection
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert "idle" in closed.value.rcvd.reason
    wait_for_no_sessions(server)
    server_sound(server.base_url)


async def test_connections_past_the_limit_get_503(server_sound):
    config = ServerConfig(port=0, pool_size=0, no_token=True, max_connections=3)
    with ServerThread(config) as server:
        url = ws_url(server)
        async with connect(url), connect(url), connect(url):
            async with httpx.AsyncClient(base_url=server.base_url) as http:
                assert (await http.get("/health")).status_code == 503
        wait_for_no_sessions(server)
        server_sound(server.base_url)


# -- raw WebSocket helpers ------------------------------------------------------------------


@contextlib.contextmanager
def served(*options: str) -> Iterator[tuple[subprocess.Popen, str, int]]:
    """A ``kernelenv serve`` process on loopback (no token, no journal) for the block."""
    with tempfile.TemporaryDirectory(prefix="kr-") as runtime:
        process, info = start_plain_server(Path(runtime), "--no-token", *options)
        try:
            yield process, info["url"], int(info["url"].rsplit(":", 1)[1])
        finally:
            stop(process)


def _open_raw_websocket(port: int) -> tuple[socket.socket, ClientProtocol]:
    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws"), max_size=None)
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    protocol.send_request(protocol.connect())
    sock.sendall(b"".join(protocol.data_to_send()))
    while not any(isinstance(e, Response) for e in protocol.events_received()):
        protocol.receive_data(sock.recv(65536))
    return sock, protocol


def _send_frame(sock: socket.socket, protocol: ClientProtocol, frame: dict) -> None:
    protocol.send_text(json.dumps(frame).encode())
    sock.sendall(b"".join(protocol.data_to_send()))


def _send_until_refused(sock: socket.socket, frame: bytes, limit: int) -> int:
    """Bytes the server's side took before it stopped reading (writes block for 3 s)."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(frame)
    offset = 0
    while sent < limit:
        try:
            n = sock.send(view[offset:])
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], 3)
            if not writable:
                break
            continue
        sent += n
        offset = (offset + n) % len(frame)
    return sent


def test_a_server_whose_open_file_limit_cannot_hold_max_sessions_says_so():
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    process = subprocess.Popen(
        [sys.executable, "-m", "kernelenv", "serve", "--port", "0", "--no-token"],
        env={**os.environ, "KERNELENV_MAX_SESSIONS": "100"}, preexec_fn=low_limit,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "running on" in line:
                break
        said = "".join(lines)
        assert "max_sessions is 100" in said and "room for about 48 kernels" in said, said
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()


def test_the_server_lifts_its_open_file_limit_to_the_hard_one():
    """A session holds about thirty descriptors in the server: the usual soft limit of 1024
    would fail kernel starts past some thirty sessions (a pool lifts it when it starts), and
    a hard limit of 20000 past some 700 (a privileged server lifts that too)."""
    code = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "hard = min(hard, 20000)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "from kernelenv.runtime.open_files import raise_open_file_limit\n"
        "raise_open_file_limit()\n"
        "status = open('/proc/self/status').read()\n"
        "caps = int(status.split('CapEff:')[1].split()[0], 16)\n"
        "lifted = 1 << 17 if caps & (1 << 24) else hard\n"  # CAP_SYS_RESOURCE
        "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (lifted, lifted))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "True", run.stderr
