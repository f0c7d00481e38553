"""Attacks on the server from a browser and the network: cross-origin pages, DNS rebinding,
simple requests, tokens in logs, the docs routes. Each against a real server on loopback."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from kernelenv.server import ServerConfig, ServerThread
from kernelenv.server.guard import RequestGuard

TOKEN = "guard-test-token"
WAIT_MS = 60_000

# A page of another origin: it tries to drive the server from the visitor's browser.
ATTACK_PAGE = """<!doctype html><meta charset="utf-8"><title>a foreign page</title>
<script>
async function attack(target, token) {
  const result = {};
  const query = token ? "?token=" + encodeURIComponent(token) : "";
  result.socket = await new Promise((resolve) => {
    const ws = new WebSocket(target.replace("http", "ws") + "/ws" + query);
    ws.onopen = () => ws.send(JSON.stringify({type: "reset", data: {}}));
    ws.onmessage = (event) => { resolve("message " + event.data); ws.close(); };
    ws.onclose = (event) => resolve("closed " + event.code);
  });
  const rpc = {jsonrpc: "2.0", id: 1, method: "tools/call",
               params: {name: "reset", arguments: {episode_id: "from-a-foreign-page"}}};
  for (const route of ["mcp", "reset"]) {
    try {
      // A CORS "simple request": text/plain goes out without a preflight.
      const reply = await fetch(target + "/" + route, {method: "POST", mode: "no-cors",
        headers: {"Content-Type": "text/plain"}, body: JSON.stringify(rpc)});
      result[route] = "sent, " + reply.type;
    } catch (error) {
      result[route] = "failed " + error;
    }
  }
  return result;
}
</script>"""

# The same actions from the server's own playground origin, as the playground does them.
SAME_ORIGIN_ACTIONS = """async ([token]) => {
  const result = {};
  result.socket = await new Promise((resolve) => {
    const ws = new WebSocket(new URL("../ws", location.href).href.replace("http", "ws"),
                             ["kernelenv", "kernelenv.bearer." + token]);
    ws.onopen = () => ws.send(JSON.stringify({type: "reset", data: {}}));
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.data.observation && frame.data.metadata.kernelenv.return_value === "2") {
        resolve("ran 1+1"); ws.close(); return;
      }
      ws.send(JSON.stringify({type: "step", data: {code: "1+1"}}));
    };
    ws.onclose = (event) => resolve("closed " + event.code);
  });
  const reply = await fetch(new URL("../mcp", location.href), {method: "POST",
    headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token},
    body: JSON.stringify({jsonrpc: "2.0", id: 1, method: "tools/list"})});
  result.mcp = reply.status + " " + (await reply.json()).result.tools.length;
  return result;
}"""


class _AttackPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = ATTACK_PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def foreign_origin() -> Iterator[str]:
    """A second tiny HTTP server on another port: another origin, serving the attack page."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AttackPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module", params=["token", "no-token"])
def server(request) -> Iterator[ServerThread]:
    """A server with a token (the page even knows it), and one started with ``no_token``."""
    options = {"token": TOKEN} if request.param == "token" else {"no_token": True}
    with ServerThread(ServerConfig(port=0, pool_size=1, **options)) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is missing: run scripts/install-system-deps.sh (Debian 'chromium')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_a_foreign_page_cannot_drive_the_server(browser, foreign_origin, server, server_sound):
    page = browser.new_page()
    try:
        page.goto(f"{foreign_origin}/attack.html", timeout=WAIT_MS)
        result = page.evaluate(
            "([target, token]) => attack(target, token)", [server.base_url, TOKEN]
        )
        # Refused at the handshake: the browser sees the socket close before it opened.
        assert result["socket"].startswith("closed"), result
        assert not result["socket"].startswith("message"), result
        # The page cannot read a no-cors reply; the server's state shows nothing happened.
        assert server.app.state.sessions.active_count == 0, result
        assert server.app.state.sessions.find("from-a-foreign-page") is None

        # The same actions from the server's own playground origin work.
        own = browser.new_page()
        try:
            own.goto(f"{server.base_url}/web/?token={TOKEN}", timeout=WAIT_MS)
            done = own.evaluate(SAME_ORIGIN_ACTIONS, [TOKEN])
        finally:
            own.close()
        assert done["socket"] == "ran 1+1", done
        assert done["mcp"].startswith("200 ")
    finally:
        page.close()
    server_sound(server.base_url, TOKEN)


@pytest.mark.parametrize(
    ("headers", "status", "needle"),
    [
        ({"Origin": "http://evil.example", "Content-Type": "application/json"}, 403, "Origin"),
        ({"Origin": "null", "Content-Type": "application/json"}, 403, "Origin"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ({}, 415, "application/json"),
    ],
)
def test_cross_site_and_simple_requests_are_refused(server, server_sound, headers, status,
                                                    needle):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "reset", "arguments": {}}})
    headers = {"Authorization": f"Bearer {TOKEN}", **headers}
    reply = httpx.post(f"{server.base_url}/mcp", content=body, headers=headers)
    assert reply.status_code == status and needle in reply.json()["detail"]
    assert server.app.state.sessions.active_count == 0
    server_sound(server.base_url, TOKEN)


def _raw_request(port: int, request: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request.encode())
        return sock.recv(4096).decode(errors="replace")


def test_dns_rebinding_by_host_header_is_refused(server, server_sound):
    rebinding = {"Host": f"attacker.example:{server.port}", "Authorization": f"Bearer {TOKEN}"}
    for method, path in [("get", "/health"), ("get", "/schema"), ("post", "/reset")]:
        reply = httpx.request(method, f"{server.base_url}{path}", headers=rebinding, json={})
        assert reply.status_code == 403, (path, reply.text)
        assert "DNS rebinding" in reply.json()["detail"]
    handshake = _raw_request(server.port, (
        f"GET /ws?token={TOKEN} HTTP/1.1\r\nHost: attacker.example:{server.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ))
    assert handshake.startswith("HTTP/1.1 403"), handshake
    assert server.app.state.sessions.active_count == 0
    server_sound(server.base_url, TOKEN)


def test_host_and_origin_allow_lists():
    guard = RequestGuard(None, ServerConfig(  # type: ignore[arg-type]
        no_token=True, allowed_hosts=["env.example"], allowed_origins=["https://ui.example/"]
    ))
    assert guard.host_allowed("localhost:8000") and guard.host_allowed("127.0.0.1")
    assert guard.host_allowed("[::1]:8000") and guard.host_allowed("10.1.2.3:80")
    assert guard.host_allowed("app.localhost") and guard.host_allowed("ENV.example:8000")
    assert not guard.host_allowed("attacker.example") and not guard.host_allowed("localhost.evil")
    assert guard.origin_allowed("https://ui.example", "127.0.0.1:8000")
    assert guard.origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert not guard.origin_allowed("http://127.0.0.1:9000", "127.0.0.1:8000")
    assert not guard.origin_allowed("null", "127.0.0.1:8000")
    anyone = RequestGuard(None, ServerConfig(  # type: ignore[arg-type]
        no_token=True, allowed_hosts=["*"], allowed_origins=["*"]
    ))
    assert anyone.host_allowed("attacker.example")
    assert anyone.origin_allowed("http://evil.example", "127.0.0.1:1")


def test_docs_routes_need_the_token(server, server_sound):
    needs_token = server.config.token is not None
    for path in ["/docs", "/redoc", "/openapi.json"]:
        bare = httpx.get(f"{server.base_url}{path}")
        assert bare.status_code == (401 if needs_token else 200), path
        allowed = httpx.get(f"{server.base_url}{path}", params={"token": TOKEN})
        assert allowed.status_code == 200, path
    docs = httpx.get(f"{server.base_url}/docs", params={"token": TOKEN}).text
    if needs_token:  # the page loads the schema with the token it was opened with
        assert f"/openapi.json?token={TOKEN}" in docs
    # A token in the query is for links a user opens: it never authorises a write.
    write = httpx.post(f"{server.base_url}/reset", params={"token": TOKEN}, json={})
    assert write.status_code == (401 if needs_token else 200)
    if write.status_code == 200:
        httpx.post(f"{server.base_url}/close", json={"episode_id": write.json()["episode_id"]})
    server_sound(server.base_url, TOKEN)


def test_tokens_stay_out_of_the_access_log(tmp_path: Path, server_sound):
    """``kernelenv serve`` with its own generated token: the URL it prints carries the token,
    and the access log lines of requests carrying it in their query do not."""
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(  # port 0: the banner names the port it bound
            [sys.executable, "-m", "kernelenv", "serve", "--port", "0", "--pool-size", "0",
             "--no-journal", "--log-level", "info"],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "KERNELENV_RUNTIME_DIR": str(tmp_path / "runtime")},
        )  # fmt: skip
    try:
        token = None
        for _ in range(600):
            printed = log_path.read_text()
            if "/web/?token=" in printed:
                base = printed.split("kernelenv serving on ", 1)[1].split()[0]
                port = int(base.rsplit(":", 1)[1])
                assert _healthy(base)
                token = printed.split("/web/?token=", 1)[1].split()[0]
                break
            assert process.poll() is None, printed
            threading.Event().wait(0.1)
        assert token, log_path.read_text()
        assert httpx.get(f"{base}/web/", params={"token": token}).status_code == 200
        assert httpx.get(f"{base}/schema", params={"token": token}).status_code == 200
        handshake = _raw_request(port, (
            f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ))
        assert handshake.startswith("HTTP/1.1 101"), handshake
        server_sound(base, token)
    finally:
        process.terminate()
        process.wait(30)
    lines = log_path.read_text().splitlines()
    request_lines = [line for line in lines if '"GET /' in line or "WebSocket /ws" in line]
    assert any("/web/?token=[redacted]" in line for line in request_lines), lines
    assert any("/ws?token=[redacted]" in line for line in request_lines), lines
    leaking = [line for line in lines if token in line]
    # Only the two start-up lines that tell the user the token carry it.
    assert len(leaking) == 2 and all(
        line.startswith(("Open the playground", "Clients send")) for line in leaking
    ), leaking


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
