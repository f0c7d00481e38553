"""Attacks of issue #24 run against a real ``kernelenv serve`` and real kernels, as an attacker
with the README and the code would run them. After each, the server answers /health, a new
episode runs ``1+1`` (``server_sound``) and nothing is left behind (the server's processes end
with it; its folders are removed)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from local_server import start_plain_server, stop

from kernelenv.sandbox.episode_fs import episode_fs_problem
from kernelenv.sandbox.landlock import landlock_abi


@pytest.fixture
def runtime() -> Iterator[Path]:
    """The servers' runtime directory (their info files), outside any kernel's view."""
    path = Path(tempfile.mkdtemp(prefix="ka-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Server:
    """A ``kernelenv serve`` subprocess and an HTTP client holding its token."""

    def __init__(self, runtime: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.process, self.info = start_plain_server(runtime, *args, env=env)
        self.url = self.info["url"]
        self.token = self.info["token"]
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=120)
        self.output: str | None = None

    def reset(self) -> str:
        reply = self.http.post("/reset", json={})
        assert reply.status_code == 200, reply.text
        return reply.json()["episode_id"]

    def step(self, episode_id: str, code: str, timeout_s: float = 60, keep: bool = True) -> dict:
        action = {"code": code} if keep else {"code": code, "keep": False}
        reply = self.http.post(
            "/step", json={"episode_id": episode_id, "action": action, "timeout_s": timeout_s}
        )
        assert reply.status_code == 200, reply.text
        return reply.json()["observation"]

    def fork(self, episode_id: str) -> str:
        reply = self.http.post("/fork", json={"episode_id": episode_id, "n": 1})
        assert reply.status_code == 200, reply.text
        return reply.json()["episode_ids"][0]

    def stop(self) -> str:
        """Stop the server (Ctrl-C); its output, stdout and stderr together."""
        if self.output is None:
            self.http.close()
            self.output = stop(self.process)
        return self.output


@pytest.fixture
def serve(runtime: Path) -> Iterator:
    """``serve(*args, env=...)``: a started :class:`Server`, stopped after the test."""
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        servers.append(Server(runtime, *args, env=env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _limits_confined() -> bool:
    """Whether a ``limits`` kernel is confined by Landlock (it needs the episode's byte
    budget, which a root server mounts)."""
    return landlock_abi() >= 1 and episode_fs_problem() is None


# -- A: secrets never in reach of agent code ---------------------------------------------------


def test_a_token_on_the_command_line_is_refused(runtime: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kernelenv", "serve", "--port", "0", "--token", "secret-1"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "KERNELENV_RUNTIME_DIR": str(runtime)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "KERNELENV_TOKEN" in result.stderr and "--token-file" in result.stderr
    assert not list(runtime.glob("server-*.json"))  # it never served


def test_the_token_comes_from_a_file_and_is_on_no_command_line(
    runtime: Path, serve, server_sound
) -> None:
    token = uuid.uuid4().hex
    token_file = runtime / "token"
    token_file.write_text(token + "\n")
    server = serve("--token-file", str(token_file))
    assert server.token == token
    assert token.encode() not in Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
    server_sound(server.url, token)
    assert server.http.get("/state", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_an_empty_token_file_is_a_clear_error(runtime: Path) -> None:
    empty = runtime / "token"
    empty.write_text("\n")
    result = subprocess.run(
        [sys.executable, "-m", "kernelenv", "serve", "--port", "0", "--token-file", str(empty)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "KERNELENV_RUNTIME_DIR": str(runtime)},
    )  # fmt: skip
    assert result.returncode == 2 and "is empty" in result.stderr


# Agent code scanning every process: command lines, environments, memory maps, descriptors,
# the connection files named on command lines, and the servers' info files.
PROC_SCAN = """
import glob, json, os
token = {token!r}.encode()
seen, environ_read, files_read, listed = [], [], [], []
me = os.getpid()
for proc in glob.glob('/proc/[0-9]*'):
    pid = int(proc.rsplit('/', 1)[1])
    for name in ('cmdline', 'environ', 'maps', 'status'):
        try:
            data = open(f'{{proc}}/{{name}}', 'rb').read()
        except OSError:
            continue
        if name == 'cmdline':
            listed.append(pid)
        if token in data:
            seen.append(f'{{proc}}/{{name}}')
        if name == 'environ' and pid != me:
            environ_read.append(pid)
        if name == 'cmdline' and pid != me:
            for arg in data.split(b'\\0'):
                if arg.endswith((b'.json', b'.sock', b'.rules')):
                    try:
                        open(arg, 'rb').read()
                        files_read.append(arg.decode())
                    except OSError:
                        pass
    try:
        for fd in os.listdir(f'{{proc}}/fd'):
            os.readlink(f'{{proc}}/fd/{{fd}}')
            if pid != me:
                environ_read.append(pid)
                break
    except OSError:
        pass
for info in glob.glob({runtime!r} + '/*'):
    try:
        if token in open(info, 'rb').read():
            seen.append(info)
    except OSError:
        pass
print(json.dumps({{'seen': seen, 'other_pids_read': sorted(set(environ_read)),
                  'files_read': files_read, 'listed': listed}}))
"""


def test_at_limits_agent_code_learns_neither_the_token_nor_other_kernels(
    runtime: Path, serve, server_sound
) -> None:
    if not _limits_confined():
        pytest.skip("Landlock with the episode byte budget (a root server) is needed here")
    token = uuid.uuid4().hex
    server = serve("--sandbox", "limits", env={"KERNELENV_TOKEN": token})
    assert server.token == token
    victim = server.reset()
    assert server.step(victim, "secret = 41 + 1\nsecret")["metadata"]["kernelenv"]["status"] == "ok"
    attacker = server.reset()
    observation = server.step(attacker, PROC_SCAN.format(token=token, runtime=str(runtime)))
    assert observation["metadata"]["kernelenv"]["status"] == "ok", observation
    found = json.loads(observation["stdout"])
    assert found["listed"] == [], found  # /proc cannot be listed: the scan finds no process
    assert found["seen"] == [], found  # the token: in no command line, environment or file
    # No other process's environment or descriptors (the server's, the victim kernel's,
    # the template's), and no connection file, template socket or rules file of another.
    assert found["other_pids_read"] == [], found
    assert found["files_read"] == [], found
    # The victim's kernel is untouched.
    assert server.step(victim, "secret")["metadata"]["kernelenv"]["return_value"] == "42"
    server_sound(server.url, token)


# Agent code reading other processes' /proc folders by pid (the server's, the template's,
# another episode's kernel's, PID 1's), its own folder, and what ordinary code needs of /proc.
PROC_PROBE = """
import json, os, subprocess, sys
def readable(path):
    try:
        with open(path, 'rb') as f:
            f.read()
        return True
    except OSError:
        return False
def listable(path):
    try:
        return bool(os.listdir(path))
    except OSError:
        return False
others = {others!r}
print(json.dumps({{
    'others_read': [f'/proc/{{pid}}/{{name}}' for pid in others
                    for name in ('cmdline', 'comm', 'status', 'stat', 'environ')
                    if readable(f'/proc/{{pid}}/{{name}}')],
    'others_listed': [pid for pid in others if listable(f'/proc/{{pid}}')],
    'proc_listed': listable('/proc'),
    'own': readable('/proc/self/status') and listable('/proc/self/task')
           and readable('/proc/thread-self/comm'),
    'ordinary': [os.cpu_count() > 0, len(os.getloadavg()), readable('/proc/meminfo'),
                 readable('/proc/cpuinfo'), readable('/proc/sys/kernel/osrelease'),
                 subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True,
                                text=True).stdout.strip()],
}}))
"""
ORDINARY = [True, 3, True, True, True, "42"]


def test_at_limits_agent_code_reads_no_other_process_in_proc(serve, server_sound) -> None:
    if not _limits_confined():
        pytest.skip("Landlock with the episode byte budget (a root server) is needed here")
    server = serve("--sandbox", "limits", "--kernel-launch", "template")
    victim = server.reset()
    ids = server.step(victim, "import os\nos.getpid(), os.getppid()")["metadata"]["kernelenv"]
    kernel, template = ast.literal_eval(ids["return_value"])
    others = [server.process.pid, template, kernel, 1]
    assert len(set(others)) == 4
    attacker = server.reset()
    probe = PROC_PROBE.format(others=others)

    def run(episode: str, keep: bool = True) -> dict:
        observation = server.step(episode, probe, keep=keep)
        assert observation["metadata"]["kernelenv"]["status"] == "ok", observation
        return json.loads(observation["stdout"])

    found = run(attacker)
    # No other process's command line, name or status, nor even the list of pids...
    assert found["others_read"] == [] and found["others_listed"] == [], found
    assert found["proc_listed"] is False
    # ...while the kernel's own folder and what ordinary code reads of /proc stay readable.
    assert found["own"] is True, found
    assert found["ordinary"] == ORDINARY, found
    # A throwaway step, a live fork and a throwaway step in it (forks of the kernel, with pids
    # of their own: their /proc/self is out of reach) work, and read no other process either.
    child = server.fork(attacker)
    for found in (run(attacker, keep=False), run(child), run(child, keep=False)):
        assert found["others_read"] == [] and found["others_listed"] == [], found
        assert found["proc_listed"] is False and found["ordinary"] == ORDINARY, found
    server_sound(server.url, server.token)


# -- D: kernels get no descriptor of the server's ----------------------------------------------

FAKE_LOG = "INFO:     kernelenv-fake-log-line \x1b[2J\x1b[31m"
# Agent code writing to every descriptor it holds or can open through /proc (its own, those
# behind ipykernel's output capture, and, past the kernel itself, its parent's and PID 1's).
FD_WRITES = """
import os, sys
mark = {mark!r}.encode()
written = []
def write(fd, where):
    try:
        os.write(fd, mark + b'\\n')
        written.append(where)
    except OSError:
        pass
for name in os.listdir('/proc/self/fd'):
    try:
        target = os.readlink(f'/proc/self/fd/{{name}}')
    except OSError:
        continue
    if not target.startswith(('socket:', 'anon_inode:')):
        write(int(name), target)
for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
    fd = getattr(stream, '_original_stdstream_copy', None)
    if fd is not None:
        write(fd, 'original ' + str(fd))
for pid in {others}:
    try:
        names = os.listdir(f'/proc/{{pid}}/fd')
    except OSError:
        continue
    for name in names:
        try:
            fd = os.open(f'/proc/{{pid}}/fd/{{name}}', os.O_WRONLY | os.O_NOCTTY)
        except OSError:
            continue
        write(fd, f'/proc/{{pid}}/fd/{{name}}')
        os.close(fd)
print(len(written), 'written')
"""


@pytest.mark.parametrize(
    "level, launch",
    [("none", "template"), ("limits", "template"), ("limits", "cold"), ("bwrap", "template"),
     ("bwrap", "cold")],
)  # fmt: skip
def test_kernels_cannot_write_into_the_servers_output(
    level: str, launch: str, serve, server_sound
) -> None:
    from kernelenv.sandbox.config import bwrap_available

    if level == "bwrap" and not bwrap_available():
        pytest.skip("bubblewrap is not usable here")
    server = serve("--sandbox", level, "--kernel-launch", launch, "--log-level", "info")
    episode = server.reset()
    # At none the kernel is the server's user with its capabilities: other processes'
    # descriptors are in its reach by design (the README's threat model); its own are tried.
    others = "()" if level == "none" else "(os.getppid(), 1)"
    observation = server.step(episode, FD_WRITES.format(mark=FAKE_LOG, others=others))
    assert observation["metadata"]["kernelenv"]["status"] == "ok", observation
    assert "written" in observation["stdout"]
    server_sound(server.url, server.token)
    output = server.stop()
    assert "kernelenv serving on" in output  # the capture holds the server's output
    assert "kernelenv-fake-log-line" not in output
    assert "\x1b[2J" not in output


# -- B: every kernel message bounded as a whole ------------------------------------------------

# Agent code re-sending one 1 MiB buffer as a thousand parts of one IOPub message, eight times,
# through the kernel's own session and IOPub thread (zero-copy: it costs the kernel nothing).
MULTIPART_FLOOD = """
import time
kernel = get_ipython().kernel
content = {'data': {'text/plain': 'flood'}, 'metadata': {}}
msg = kernel.session.msg('display_data', content, parent=kernel.get_parent('shell'))
frames = kernel.session.serialize(msg, ident=b'display_data')
buffer = memoryview(bytearray(1 << 20))
for _ in range(8):
    kernel.iopub_thread.send_multipart(frames + [buffer] * 1000, copy=False)
time.sleep(3)
print('flooded')
"""


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_multipart_flood_does_not_grow_the_server(serve, server_sound) -> None:
    server = serve()
    episode = server.reset()
    assert server.step(episode, "1+1")["metadata"]["kernelenv"]["return_value"] == "2"
    before = _peak_rss_mib(server.process.pid)
    observation = server.step(episode, MULTIPART_FLOOD)
    grown = _peak_rss_mib(server.process.pid) - before
    assert grown < 64, f"the server's peak memory grew by {grown:.0f} MiB"
    kernelenv = observation["metadata"]["kernelenv"]
    assert kernelenv["status"] == "ok", observation
    assert observation["stdout"] == "flooded\n"
    assert observation["metadata"]["output_lost"] is True  # and the observation says so
    # The episode goes on, on the same kernel.
    assert server.step(episode, "6 * 7")["metadata"]["kernelenv"]["return_value"] == "42"
    server_sound(server.url, server.token)
