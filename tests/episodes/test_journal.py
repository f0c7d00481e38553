"""The journal makes each step durable before it is returned; recover rebuilds running episodes."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import anyio
import nbformat
import pytest

from kernelenv import CodeAction, Journal, KernelEnv
from kernelenv.episodes.journal import read_journal, recover_all

pytestmark = pytest.mark.anyio


async def test_each_step_is_on_disk_when_step_returns(shared_pool, tmp_path):
    journal = Journal(tmp_path / "journal")
    env = KernelEnv(pool=shared_pool, journal=journal)
    try:
        await env.reset(seed=3)
        episode_id = env.state.episode_id
        path = journal.path_of(episode_id)
        for n, code in enumerate(["x = 2", "print(x * 21)", "1 / 0"], start=1):
            observation = await env.step(code)
            entry = read_journal(path)  # read back by a new reader, as after a crash
            assert len(entry.steps) == n
            assert entry.steps[-1].observation == observation
            assert not entry.ended
        assert entry.info.seed == 3
        assert entry.info.episode_id == episode_id
        # A reset ends the first episode and starts a second journal.
        await env.reset()
        assert read_journal(path).ended
        second = env.state.episode_id
        await env.step("y = 1")
    finally:
        await env.close()
    assert read_journal(journal.path_of(second)).ended


async def test_recover_writes_only_running_episodes(shared_pool, tmp_path):
    journal = Journal(tmp_path / "journal")
    finished = KernelEnv(pool=shared_pool, journal=journal)
    async with finished:
        await finished.reset()
        await finished.step("print('finished')")
    running = KernelEnv(pool=shared_pool, journal=journal)
    try:
        await running.reset()
        await running.step("print('still running')")
        await running.step("z = 3\nz")
        written = recover_all(tmp_path / "journal", tmp_path / "out")
        assert [p.name for p in written] == [f"{running.state.episode_id}.ipynb"]
        notebook = nbformat.read(written[0], as_version=4)
        nbformat.validate(notebook)
        assert [c.source for c in notebook.cells] == ["print('still running')", "z = 3\nz"]
        assert notebook.cells[1].outputs[0]["data"]["text/plain"] == "3"
        assert notebook.metadata["kernelenv"]["journal"]["ended"] is False
        everything = recover_all(tmp_path / "journal", tmp_path / "all", include_ended=True)
        assert len(everything) == 2
    finally:
        await running.close()


def test_torn_last_line_and_hostile_episode_ids(tmp_path):
    journal = Journal(tmp_path)
    assert journal.path_of("../../etc/passwd").parent == tmp_path
    assert journal.path_of("a/b") != journal.path_of("a_b")
    path = tmp_path / "e.jsonl"
    path.write_text(
        '{"kind":"episode","started_at":1,"info":{"episode_id":"e"}}\n'
        '{"kind":"step","index":1,"action":{"code":"1"},"observation":{},'
        '"started_at":1,"ended_at":2}\n'
        '{"kind":"step","index":2,"act'  # the write a crash cut short
    )
    entry = read_journal(path)
    assert len(entry.steps) == 1 and not entry.ended


def test_recover_cli_with_nothing_to_recover(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kernelenv",
            "recover",
            "--journal-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "no interrupted episodes" in result.stdout


@pytest.fixture
async def journaled_server(tmp_path):
    """``kernelenv serve`` as a subprocess on a free port, journaling into ``tmp_path``."""
    from kernelenv.client.launchers import LocalServerLauncher

    launcher = LocalServerLauncher(journal_dir=str(tmp_path / "journal"), pool_size=1)
    base_url = await launcher.start()
    try:
        yield launcher, base_url, tmp_path / "journal"
    finally:
        await launcher.stop()


async def test_server_killed_mid_episode_is_recovered(journaled_server, tmp_path):
    import httpx
    import psutil

    from kernelenv.client.coding_env import CodingEnv

    launcher, base_url, journal_dir = journaled_server
    steps = ["import math\nr = 2", "print('area', round(math.pi * r * r, 3))", "r / 0", "r + 40"]
    client = CodingEnv(base_url=base_url, token=launcher.token)
    try:
        await client.connect()
        await client.reset(seed=5)
        for code in steps:
            result = await client.step(CodeAction(code=code))
        episode_id = result.observation.metadata["episode_id"]
        # The live episode is served as a notebook too.
        auth = {"Authorization": f"Bearer {launcher.token}"}
        async with httpx.AsyncClient(base_url=base_url, headers=auth) as http:
            reply = await http.get(f"/episodes/{episode_id}.ipynb")
            missing = await http.get("/episodes/no-such-episode.ipynb")
            # An episode that has ended is served from the journal.
            ended_id = (await http.post("/reset", json={})).json()["episode_id"]
            await http.post("/step", json={"episode_id": ended_id, "action": {"code": "6 * 7"}})
            await http.post("/close", json={"episode_id": ended_id})
            ended = nbformat.reads((await http.get(f"/episodes/{ended_id}.ipynb")).text, 4)
        assert ended.cells[0].outputs[0]["data"]["text/plain"] == "42"
        assert ended.metadata["kernelenv"]["journal"]["ended"] is True
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"].startswith("application/x-ipynb+json")
        live = nbformat.reads(reply.text, as_version=4)
        nbformat.validate(live)
        assert [c.source for c in live.cells] == steps
        assert missing.status_code == 404 and "no-such-episode" in missing.json()["detail"]

        # SIGKILL: no shutdown code runs, the episode is still open.
        server = psutil.Process(launcher.process.pid)
        kernels = server.children(recursive=True)
        assert kernels, "the server should be running kernels"
        server.kill()
        server.wait(10)
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    _, alive = psutil.wait_procs(kernels, timeout=15)
    assert not alive, f"the killed server's kernels survived: {[p.pid for p in alive]}"

    with anyio.fail_after(60):
        result = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "kernelenv",
                "recover",
                "--journal-dir",
                str(journal_dir),
                "--out",
                str(tmp_path / "recovered"),
                "--quiet",
            ],
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    recovered = tmp_path / "recovered" / f"{episode_id}.ipynb"
    assert result.stdout.decode().strip() == str(recovered)
    notebook = nbformat.read(recovered, as_version=4)
    nbformat.validate(notebook)
    assert [c.source for c in notebook.cells] == steps
    for old, new in zip(live.cells, notebook.cells, strict=True):
        assert new.outputs == old.outputs
    assert notebook.cells[2].metadata["kernelenv"]["status"] == "error"
    assert notebook.metadata["kernelenv"]["seed"] == 5
    assert notebook.metadata["kernelenv"]["journal"]["ended"] is False


async def test_fsync_journal_raises_when_its_directory_is_gone(shared_pool, tmp_path):
    """With fsync=True a step whose directory cannot be forced to the disk is an error."""
    import shutil

    from kernelenv import JournalError

    durable = Journal(tmp_path / "durable", fsync=True)
    relaxed = Journal(tmp_path / "relaxed")
    for journal in (durable, relaxed):
        env = KernelEnv(pool=shared_pool, journal=journal)
        try:
            await env.reset()
            # The open file still takes writes, but the directory naming it is gone: after a
            # crash nothing would find the journal.
            shutil.rmtree(journal.directory)
            if journal is durable:
                with pytest.raises(JournalError, match="not recorded durably"):
                    await env.step("x = 1")
                with pytest.raises(JournalError):  # still not durable: still an error
                    await env.step("x = 2")
            else:  # without fsync the episode goes on
                assert (await env.step("x = 1")).status.value == "ok"
        finally:
            await env.close()
    assert issubclass(JournalError, OSError)


# -- retention ---------------------------------------------------------------------------


def _journal_files(directory, ages_s):
    """Files of the given ages (seconds), 1 KiB each, newest last; returns their paths."""
    import os
    import time

    now = time.time()
    paths = []
    for number, age in enumerate(ages_s):
        path = directory / f"episode-{number}.jsonl"
        path.write_bytes(b"x" * 1024)
        os.utime(path, (now - age, now - age))
        paths.append(path)
    return paths


def test_prune_keeps_the_newest_within_age_count_and_bytes(tmp_path):
    from kernelenv.episodes.retention import Retention, prune

    old, older, mid, new, newest = _journal_files(tmp_path, [500, 600, 300, 20, 10])
    outside = tmp_path.parent / "outside.jsonl"
    outside.write_text("not the journal's")
    (tmp_path / "link.jsonl").symlink_to(outside)  # never followed, never removed
    assert prune(tmp_path, Retention()) == []  # no bound: everything stays
    assert set(prune(tmp_path, Retention(max_age_s=400))) == {old, older}
    assert prune(tmp_path, Retention(max_files=2), keep=[mid]) == [new]  # mid is running
    assert prune(tmp_path, Retention(max_bytes=1024)) == [mid]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode-4.jsonl", "link.jsonl"]
    assert outside.read_text() == "not the journal's"


def test_journal_prune_cli(tmp_path):
    _journal_files(tmp_path, [30, 20, 10])
    run = subprocess.run(
        [sys.executable, "-m", "kernelenv", "journal", "prune", "--dir", str(tmp_path),
         "--max-files", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "removed 2 journal files" in run.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["episode-2.jsonl"]


async def test_a_server_prunes_its_journal_as_episodes_end(tmp_path, monkeypatch):
    """Many short episodes on a server with --journal-max-files 2: at most the newest two
    files stay (the running episode's among them)."""
    import httpx

    from kernelenv.episodes import journal
    from kernelenv.server import ServerConfig, ServerThread

    monkeypatch.setattr(journal, "PRUNE_INTERVAL_S", 0.0)  # every end, for the test
    config = ServerConfig(port=0, pool_size=1, no_token=True, journal_dir=str(tmp_path),
                          journal_max_files=2)
    with ServerThread(config) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
            for number in range(5):
                episode = f"rl-{number}"
                assert (await http.post("/reset", json={"episode_id": episode})).status_code == 200
                step = {"episode_id": episode, "action": {"code": f"{number} * 2"}}
                assert (await http.post("/step", json=step)).status_code == 200
                assert (await http.post("/close", json={"episode_id": episode})).status_code == 200
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["rl-3.jsonl", "rl-4.jsonl"]
