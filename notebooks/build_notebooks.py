"""Writes the example notebooks of this folder from the cells below (run it after editing them).

The notebooks are generated so that their JSON stays clean (no outputs, stable cell ids);
``tests/test_notebooks.py`` checks that they match this script and executes every one of them.

    python notebooks/build_notebooks.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

# Each notebook: file name -> list of ("md" | "code", source).
NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01-quickstart.ipynb": [
        (
            "md",
            """\
# kernelenv quickstart

Every episode runs agent code in its own fresh IPython kernel and returns an observation per
step, with OpenEnv `coding_env`'s fields plus everything a notebook shows.

Jupyter already runs an event loop in this kernel, so `asyncio.run` is off limits here. The
blocking facade `KernelEnv().sync()` runs kernelenv's async core on a private thread, so its
methods work from a cell without `await`.""",
        ),
        (
            "code",
            """\
from kernelenv import CodeAction, KernelEnv

env = KernelEnv().sync()
first = env.reset(seed=0)
first.metadata["episode_id"]""",
        ),
        ("md", "A step runs code; state persists between steps of an episode."),
        (
            "code",
            """\
obs = env.step(CodeAction(code="x = 6 * 7\\nprint('x is', x)\\nx"))
print(obs.status.value, obs.exit_code, repr(obs.stdout), obs.return_value)
assert obs.return_value == "42\"""",
        ),
        ("md", "Errors in the agent's code are data in the observation, never exceptions."),
        (
            "code",
            """\
obs = env.step("x / 0")
print(obs.status.value, obs.exit_code, obs.error.ename)
assert obs.exit_code == 1""",
        ),
        ("md", "A step has a budget: past it the code is interrupted and the episode goes on."),
        (
            "code",
            """\
obs = env.step("import time\\ntime.sleep(30)", timeout_s=0.5)
print(obs.status.value, obs.exit_code)
assert obs.exit_code == 124
env.step("print('x survived:', x)").stdout""",
        ),
        ("md", "Rich outputs come back as nbformat outputs, exactly as Jupyter would store them."),
        (
            "code",
            """\
obs = env.step("from IPython.display import HTML\\nHTML('<b>bold</b>')")
obs.outputs""",
        ),
        (
            "code",
            """\
print(env.state)
env.close()""",
        ),
    ],
    "02-tasks-and-grading.ipynb": [
        (
            "md",
            """\
# Tasks and grading

`reset(task_id=...)` starts a graded task: its setup runs in the new kernel and the first
observation carries the prompt. `grade()` scores the episode in fresh kernels, never the live
one, so the agent cannot tamper with the grader.""",
        ),
        (
            "code",
            """\
from kernelenv import KernelEnv
from kernelenv.tasks.library import default_library

library = default_library()
library.ids()[:5]""",
        ),
        (
            "code",
            """\
env = KernelEnv().sync()
obs = env.reset(task_id="functions_easy_palindrome")
print(obs.task_id, obs.difficulty)
print(obs.task_description)""",
        ),
        ("md", "A first, naive attempt: it ignores case and punctuation, so it scores low."),
        (
            "code",
            """\
env.step("def is_palindrome(text):\\n    return text == text[::-1]")
naive = env.grade()
print(naive.score, naive.passed)
print(naive.feedback)""",
        ),
        (
            "md",
            "A better attempt in the same episode; the grade reflects the episode's final state.",
        ),
        (
            "code",
            """\
env.step(
    "def is_palindrome(text: str) -> bool:\\n"
    "    kept = [ch.lower() for ch in text if ch.isalnum()]\\n"
    "    return kept == kept[::-1]"
)
grade = env.grade()
print(grade.score, grade.passed, env.state.last_score)
assert grade.score > naive.score and grade.passed
env.close()""",
        ),
    ],
    "03-client-and-server.ipynb": [
        (
            "md",
            """\
# Client and server

`kernelenv serve` speaks OpenEnv's WebSocket and HTTP protocol. `CodingEnv.from_local_server()`
starts a server subprocess on a free loopback port (no Docker needed) and stops it on close;
`.sync()` gives the blocking client for use in a notebook.""",
        ),
        (
            "code",
            """\
import httpx
import nbformat

from kernelenv import CodeAction
from kernelenv.client import CodingEnv

client = CodingEnv.from_local_server(pool_size=1).sync()
result = client.reset(seed=0)
episode_id = result.observation.metadata["episode_id"]
episode_id""",
        ),
        (
            "code",
            """\
result = client.step(CodeAction(code="import sys\\nprint(sys.version_info[:2])\\n2 ** 10"))
print(result.observation.stdout, result.observation.return_value, result.done)
assert result.observation.return_value == "1024\"""",
        ),
        (
            "md",
            "The server serves any live episode as a notebook at `/episodes/{episode_id}.ipynb`.",
        ),
        (
            "code",
            """\
reply = httpx.get(f"{client.client.base_url}/episodes/{episode_id}.ipynb",
                  headers=client.client.headers)  # the token the launched server made
reply.raise_for_status()
served = nbformat.reads(reply.text, as_version=4)
nbformat.validate(served)
[cell.source for cell in served.cells]""",
        ),
        (
            "code",
            """\
print(client.state())
client.close()""",
        ),
    ],
    "04-export-and-replay.ipynb": [
        (
            "md",
            """\
# Export and replay

Any episode exports as a real `.ipynb`: one code cell per step with its outputs, per-step
status, reward and timing in cell metadata, the episode's id, seed and versions in notebook
metadata. Replay re-runs a notebook through a fresh kernel and reports the cells whose
outputs differ, after normalising what legitimately varies (addresses, timings, counters).""",
        ),
        (
            "code",
            """\
import tempfile
from pathlib import Path

import nbformat

from kernelenv import KernelEnv, Trajectory, replay_notebook, replay_trajectory

folder = tempfile.TemporaryDirectory()
path = Path(folder.name) / "episode.ipynb"

env = KernelEnv().sync()
env.reset(seed=42)
for code in [
    "import random\\nrolls = [random.randint(1, 6) for _ in range(10)]\\nrolls",
    "print('mean', sum(rolls) / len(rolls))",
    "object()",
]:
    env.step(code)
notebook = env.export_notebook(path)
nbformat.validate(notebook)
notebook.metadata["kernelenv"]["episode_id"], [c.metadata["kernelenv"]["status"] for c in notebook.cells]""",
        ),
        (
            "md",
            """\
`replay_notebook` is a coroutine: IPython runs top-level `await` in a cell. It replays in a
new env of its own unless given one.""",
        ),
        (
            "code",
            """\
report = await replay_notebook(path)
print(report.summary())
assert report.ok""",
        ),
        ("md", "A changed cell is reported with a diff of the normalised outputs."),
        (
            "code",
            """\
changed = nbformat.read(path, as_version=4)
changed.cells[1].source = "print('mean', sum(rolls) / len(rolls) + 1)"
report = await replay_notebook(changed)
print(report.summary())
assert [d.step for d in report.divergences] == [2]""",
        ),
        ("md", "Step by step, through an env of your choice (here with a different seed):"),
        (
            "code",
            """\
trajectory = Trajectory.from_notebook(path)
trajectory.seed = 7
async with KernelEnv() as replay_env:
    async for replayed in replay_trajectory(trajectory, replay_env):
        print(replayed.step.index, "diverged" if replayed.divergence else "matched")""",
        ),
        (
            "code",
            """\
env.close()
folder.cleanup()""",
        ),
    ],
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` as this script writes it."""
    cells = []
    for index, (kind, source) in enumerate(NOTEBOOKS[name], start=1):
        make = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        cells.append(make(source=source, id=f"cell-{index}"))
    notebook = nbformat.v4.new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )
    notebook.nbformat_minor = 5
    return notebook


def main() -> int:
    for name in NOTEBOOKS:
        nbformat.write(build(name), HERE / name)
        print(HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
