"""Replay re-runs a notebook through KernelEnv and reports exactly the cells that diverge."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest

from kernelenv import KernelEnv, Trajectory, replay_notebook, replay_trajectory
from kernelenv.replay import normalise_outputs, normalise_text

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


async def test_changed_cell_is_reported_as_the_divergence(recorded, shared_pool):
    _, changed_path = recorded
    async with KernelEnv(pool=shared_pool) as env:
        report = await replay_notebook(changed_path, env)
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
    same = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120)
    assert same.returncode == 0, same.stderr
    assert "no divergence" in same.stdout
    changed = subprocess.run(
        [*command, str(changed_path)], capture_output=True, text=True, timeout=120
    )
    assert changed.returncode == 1, changed.stderr
    assert "step 2 (cell step-2): outputs differ" in changed.stdout
    missing = subprocess.run(
        [*command, str(path) + ".missing"], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr


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
