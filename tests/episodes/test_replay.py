"""Replay re-runs a notebook through KernelEnv and reports exactly the cells that diverge."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import nbformat
import pytest

from kernelenv import KernelEnv, KernelPool, Trajectory, replay_notebook, replay_trajectory
from kernelenv.episodes.replay import StepPlan, TrajectoryStep, step_plan
from kernelenv.errors import ReplayError
from kernelenv.sandbox.config import SandboxConfig

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


BESIDE = Path(__file__).resolve().parent / "data" / "beside"


def tagged_notebook():
    """Cells as nbclient's tag tests have them: one skipped, one expected to raise."""
    cells = [
        nbformat.v4.new_code_cell("x = 1", id="set"),
        nbformat.v4.new_code_cell(
            "print('must not run')", id="skipped", metadata={"tags": ["skip-execution"]}
        ),
        nbformat.v4.new_code_cell(
            "1 / 0",
            id="raises",
            metadata={"tags": ["raises-exception"]},
            outputs=[
                nbformat.v4.new_output(
                    "error",
                    ename="ZeroDivisionError",
                    evalue="division by zero",
                    traceback=[
                        "-" * 75,
                        "ZeroDivisionError                         Traceback (most recent call last)",
                        "Cell In[2], line 1\n----> 1 1 / 0\n",
                        "ZeroDivisionError: division by zero",
                    ],
                )
            ],
        ),
        nbformat.v4.new_code_cell("   \n", id="blank"),
        nbformat.v4.new_code_cell(
            "print(x)", id="after", outputs=[nbformat.v4.new_output("stream", text="1\n")]
        ),
    ]
    return nbformat.v4.new_notebook(cells=cells)


async def test_cell_tags_are_honoured_as_nbclient_honours_them(shared_pool):
    notebook = tagged_notebook()
    async with KernelEnv(pool=shared_pool) as env:
        report = await replay_notebook(notebook, env, allow_errors=False)
        assert report.ok, report.summary()
        assert [s.skipped for s in report.steps] == [
            None, "skip-execution tag", None, "empty cell", None
        ]
        assert report.steps[2].observation.error.ename == "ZeroDivisionError"
        assert "(2 not run)" in report.summary()

        untagged = nbformat.from_dict(notebook)
        untagged.cells[2].metadata["tags"] = []
        report = await replay_notebook(untagged, env, allow_errors=False)
        [divergence] = report.divergences
        assert divergence.step == 3
        assert divergence.reason == (
            "raised ZeroDivisionError in a cell without the raises-exception tag"
        )
        # Errors are outputs like any other by default: the recorded error matches.
        assert (await replay_notebook(untagged, env)).ok

        report = await replay_notebook(notebook, env, skip_tag=None)
        [divergence] = report.divergences
        assert divergence.step == 2 and "+must not run" in divergence.diff()


async def test_relative_file_beside_the_notebook():
    # The sandbox shows a kernel nothing of the checkout but what it is told to read.
    readable = SandboxConfig(extra_readable=(str(BESIDE),))
    async with KernelPool(size=1, sandbox=readable) as pool, KernelEnv(pool=pool) as env:
        beside = await replay_notebook(BESIDE / "notebook.ipynb", env, cwd="notebook")
        assert beside.ok, beside.summary()
        elsewhere = await replay_notebook(BESIDE / "notebook.ipynb", env)  # cwd="work"
        assert [d.step for d in elsewhere.divergences] == [1, 2]
        assert "FileNotFoundError" in elsewhere.divergences[0].diff()
        explicit = await replay_notebook(BESIDE / "notebook.ipynb", env, cwd=BESIDE)
        assert explicit.ok
    with pytest.raises(ReplayError, match="read from a file"):
        await replay_notebook(nbformat.read(BESIDE / "notebook.ipynb", 4), cwd="notebook")
    with pytest.raises(ReplayError, match="not a directory"):
        await replay_notebook(BESIDE / "notebook.ipynb", cwd=BESIDE / "beside.txt")


async def test_copy_cwd_gives_a_writable_copy_and_leaves_the_original_alone(
    shared_pool, tmp_path
):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "input.txt").write_text("seven\n")
    cells = [
        nbformat.v4.new_code_cell(
            "text = open('input.txt').read()\n"
            "with open('output.txt', 'w') as f:\n"
            "    f.write(text.upper())\n"
            "print(open('output.txt').read(), end='')",
            outputs=[nbformat.v4.new_output("stream", text="SEVEN\n")],
        )
    ]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), folder / "writes.ipynb")
    async with KernelEnv(pool=shared_pool) as env:
        report = await replay_notebook(folder / "writes.ipynb", env, cwd="notebook", copy_cwd=True)
        assert report.ok, report.summary()
        assert not (folder / "output.txt").exists()
        if shared_pool.sandbox.level == "bwrap":
            # The bwrap sandbox gives kernels a private /tmp: a notebook there is only
            # reachable through a copy, and the error says so.
            with pytest.raises(ReplayError, match="copy_cwd"):
                await replay_notebook(folder / "writes.ipynb", env, cwd="notebook")


def test_cli_replays_in_the_notebook_directory_with_tolerances_and_strict_flags():
    command = [sys.executable, "-m", "kernelenv", "replay", "--quiet"]
    svg = str(Path(__file__).resolve().parent / "data" / "nbclient" / "SVG.ipynb")
    result = subprocess.run(
        [*command, "--cwd", "notebook", str(BESIDE / "notebook.ipynb")],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tolerant = subprocess.run(
        [*command, svg], check=False, capture_output=True, text=True, timeout=120
    )
    assert tolerant.returncode == 0, tolerant.stdout + tolerant.stderr
    strict = subprocess.run(
        [*command, "--strict-svg", svg], check=False, capture_output=True, text=True, timeout=120
    )
    assert strict.returncode == 1 and "outputs differ" in strict.stdout
    missing = subprocess.run(
        [*command, "--cwd", "/no/such/dir", svg],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2 and "not a directory" in missing.stderr


@pytest.mark.parametrize(
    ("code", "tags", "allow_errors", "plan"),
    [
        ("print(1)", (), False, StepPlan(run=True, errors_allowed=False)),
        ("print(1)", (), True, StepPlan(run=True, errors_allowed=True)),
        ("1 / 0", ("raises-exception",), False, StepPlan(run=True, errors_allowed=True)),
        (" \n\t", (), True, StepPlan(run=False, skipped="empty cell")),
        ("print(1)", ("skip-execution",), True, StepPlan(run=False, skipped="skip-execution tag")),
    ],
)
def test_step_plan_follows_nbclient(code, tags, allow_errors, plan):
    step = TrajectoryStep(index=1, code=code, tags=tags)
    assert step_plan(step, allow_errors=allow_errors) == plan
    assert step_plan(step, skip_tag=None).run == bool(code.strip())


async def test_per_cell_budget_interrupts_the_cell(shared_pool):
    cells = [
        nbformat.v4.new_code_cell("import time\ntime.sleep(60)", id="slow"),
        nbformat.v4.new_code_cell("print('alive')", id="next"),
    ]
    budgets = {}

    def budget(step):
        budgets[step.cell_id] = 1.0 if step.cell_id == "slow" else None
        return budgets[step.cell_id]

    async with KernelEnv(pool=shared_pool) as env:
        report = await replay_notebook(nbformat.v4.new_notebook(cells=cells), env, timeout_s=budget)
    slow, after = report.steps
    assert budgets == {"slow": 1.0, "next": None}
    assert slow.observation.status.value == "timeout"
    assert slow.observation.outputs[-1]["ename"] == "KeyboardInterrupt"  # interrupted, not killed
    assert after.observation.stdout == "alive\n" and not after.observation.kernel_restarted


async def test_replay_runs_on_kernels_forked_from_the_template(recorded, no_leaks):
    path, _ = recorded
    async with KernelPool(size=0, sandbox="none", launch="template") as pool, KernelEnv(pool=pool) as env:
        report = await replay_notebook(path, env)
        assert getattr(env.kernel.manager.provisioner, "forked", False)
    assert report.ok
