"""Replay re-runs a notebook through KernelEnv and reports exactly the cells that diverge."""

from __future__ import annotations

import subprocess
import sys

import anyio
import nbformat
import pytest

from kernelenv import KernelEnv, Trajectory, replay_notebook, replay_trajectory
from kernelenv.episodes.replay import normalise_outputs, normalise_text

pytestmark = pytest.mark.anyio

# Deterministic given the seed, but full of what varies between runs: addresses, execution
# counts in tracebacks, the kernel's temporary directory, timings.
DETERMINISTIC_CODE = [
    "import random\nvalues = [random.randint(0, 1000) for _ in range(5)]\nvalues",
    "print('sum', sum(values))",
    "object()",
    "import os\nos.getcwd()",
    "values[10]",
    "%time total = sum(range(1000))",
    "from IPython.display import HTML\nHTML(f'<i>{len(values)}</i>')",
]


@pytest.fixture(scope="module")
async def recorded(shared_pool, tmp_path_factory):
    """A seeded episode exported to a notebook, and a copy whose third cell was changed."""
    folder = tmp_path_factory.mktemp("replay")
    path, changed_path = folder / "episode.ipynb", folder / "changed.ipynb"
    async with KernelEnv(pool=shared_pool) as env:
        await env.reset(seed=1234)
        for code in DETERMINISTIC_CODE:
            await env.step(code)
        notebook = await env.export_notebook(path)
    changed = nbformat.from_dict(notebook)
    changed.cells[1].source = "print('sum', sum(values) + 1)"
    nbformat.write(changed, changed_path)
    return path, changed_path


async def test_deterministic_episode_replays_without_divergence(recorded, shared_pool):
    path, _ = recorded
    trajectory = Trajectory.from_notebook(path)
    assert trajectory.seed == 1234
    assert [step.code for step in trajectory.steps] == DETERMINISTIC_CODE
    async with KernelEnv(pool=shared_pool) as env:
        replayed = [step async for step in replay_trajectory(trajectory, env)]
    assert len(replayed) == len(DETERMINISTIC_CODE)
    assert [r.divergence for r in replayed] == [None] * len(DETERMINISTIC_CODE)
    assert replayed[4].observation.error.ename == "IndexError"


async def test_changed_cell_is_reported_as_the_divergence(recorded, shared_pool, capsys):
    _, changed_path = recorded
    async with KernelEnv(pool=shared_pool) as env:
        report = await replay_notebook(changed_path, env, progress=True)
    bar = capsys.readouterr().err
    assert "replay" in bar and f"{len(DETERMINISTIC_CODE)}/{len(DETERMINISTIC_CODE)}" in bar
    assert not report.ok
    [divergence] = report.divergences
    assert (divergence.step, divergence.cell_id) == (2, "step-2")
    assert divergence.reason == "outputs differ"
    assert "-sum " in divergence.diff() and "+sum " in divergence.diff()
    assert "1 diverged" in report.summary()


async def test_replay_without_seed_diverges_on_random_cell(recorded, shared_pool):
    path, _ = recorded
    trajectory = Trajectory.from_notebook(path)
    trajectory.seed = 99  # a different seed: the random values (and their sum) change
    async with KernelEnv(pool=shared_pool) as env:
        report = await replay_notebook(trajectory, env)
    assert [d.step for d in report.divergences] == [1, 2]


def test_cli_exit_codes(recorded):
    path, changed_path = recorded
    command = [sys.executable, "-m", "kernelenv", "replay", "--quiet"]
    same = subprocess.run(
        [*command, str(path)], check=False, capture_output=True, text=True, timeout=120
    )
    assert same.returncode == 0, same.stderr
    assert "no divergence" in same.stdout
    changed = subprocess.run(
        [*command, str(changed_path)], check=False, capture_output=True, text=True, timeout=120
    )
    assert changed.returncode == 1, changed.stderr
    assert "step 2 (cell step-2): outputs differ" in changed.stdout
    missing = subprocess.run(
        [*command, str(path) + ".missing"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr
    unknown_task = nbformat.read(path, as_version=4)
    unknown_task.metadata["kernelenv"]["task_id"] = "no_such_task"
    nbformat.write(unknown_task, path.with_name("unknown_task.ipynb"))
    unknown = subprocess.run(
        [*command, str(path.with_name("unknown_task.ipynb"))],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2
    assert "cannot replay" in unknown.stderr and "no_such_task" in unknown.stderr


def test_normalisation_of_what_legitimately_varies():
    assert normalise_text("\x1b[31m<object at 0x7fb1a094d3d0>\x1b[0m") == "<object at 0x<address>>"
    assert normalise_text("Cell In[12], line 1") == "Cell In[N], line 1"
    assert normalise_text("'/tmp/kernelenv-jqay3pou/k2-ab9208ad/work'") == "'<kernel-dir>/work'"
    assert normalise_text("CPU times: user 3 µs\nWall time: 6.2 µs") == (
        "CPU times: <time>\nWall time: <time>"
    )
    same_kind = [{"output_type": "display_data", "data": {"image/png": "AAAA"}, "metadata": {}}]
    other_bytes = [{"output_type": "display_data", "data": {"image/png": "BBBB"}, "metadata": {}}]
    assert normalise_outputs(same_kind) == normalise_outputs(other_bytes)
    assert normalise_outputs(same_kind, strict_images=True) != normalise_outputs(
        other_bytes, strict_images=True
    )
    # What must not be normalised away: values.
    assert normalise_text("sum 2517") != normalise_text("sum 2518")


PALINDROME = (
    "def is_palindrome(text: str) -> bool:\n"
    "    kept = [ch.lower() for ch in text if ch.isalnum()]\n"
    "    return kept == kept[::-1]"
)


async def test_task_episode_regrades_on_replay(shared_pool, tmp_path):
    path, broken_path = tmp_path / "task.ipynb", tmp_path / "broken.ipynb"
    async with KernelEnv(pool=shared_pool) as env:
        await env.reset(task_id="functions_easy_palindrome")
        await env.step(PALINDROME)
        await env.step("is_palindrome('A man, a plan, a canal: Panama')")
        grade = await env.grade()
        notebook = await env.export_notebook(path)
    assert grade.score == 1.0
    assert notebook.cells[0].cell_type == "markdown" and "is_palindrome" in notebook.cells[0].source
    assert notebook.metadata["kernelenv"]["task_id"] == "functions_easy_palindrome"
    assert notebook.metadata["kernelenv"]["grade"]["score"] == 1.0

    async with KernelEnv(pool=shared_pool) as env:
        report = await replay_notebook(path, env, grade=True)
    assert report.ok and report.grade.score == 1.0

    broken = nbformat.from_dict(notebook)
    broken.cells[1].source = "def is_palindrome(text):\n    return text == text[::-1]"
    nbformat.write(broken, broken_path)
    with anyio.fail_after(120):
        result = await anyio.run_process(
            [sys.executable, "-m", "kernelenv", "replay", "--quiet", "--grade", str(broken_path)],
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 1, result.stderr.decode()
    assert "step 2 (cell step-2): outputs differ" in out  # True became False
    assert "re-grade: score" in out and "(recorded: 1.000)" in out
