"""Episodes export as valid notebooks that nbconvert converts and nbclient re-executes alike."""

from __future__ import annotations

import time

import nbformat
import pytest

from kernelenv import CodeAction, CodeObservation, KernelEnv, StepStatus
from kernelenv.episodes.export import EpisodeInfo, TimedStep, episode_notebook
from kernelenv.episodes.replay import normalise_outputs
from kernelenv.errors import ResetNeeded
from kernelenv.models import ErrorInfo

pytestmark = pytest.mark.anyio

# One step per kind of output a notebook stores.
EPISODE_CODE = [
    "print('hello'); 40 + 2",
    "1 / 0",
    "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
    "from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))",
    "object()",
]


@pytest.fixture(scope="module")
async def exported(shared_pool, tmp_path_factory):
    """An episode with text, error, image and HTML outputs, its observations, and its export."""
    path = tmp_path_factory.mktemp("export") / "episode.ipynb"
    async with KernelEnv(pool=shared_pool) as env:
        await env.reset(seed=7)
        observations = [await env.step(CodeAction(code=code)) for code in EPISODE_CODE]
        notebook = await env.export_notebook(path)
        yield env.state.episode_id, observations, notebook, path


async def test_export_validates_and_keeps_outputs_exactly(exported):
    episode_id, observations, notebook, path = exported
    nbformat.validate(notebook)
    on_disk = nbformat.read(path, as_version=4)
    nbformat.validate(on_disk)
    assert (on_disk.nbformat, on_disk.nbformat_minor) == (4, 5)
    assert on_disk == notebook
    code_cells = [cell for cell in on_disk.cells if cell.cell_type == "code"]
    assert [cell.source for cell in code_cells] == EPISODE_CODE
    for cell, observation in zip(code_cells, observations, strict=True):
        assert [dict(output) for output in cell.outputs] == observation.outputs
        assert cell.execution_count == observation.execution_count
        step_meta = cell.metadata["kernelenv"]
        assert step_meta["status"] == observation.status.value
        assert step_meta["exit_code"] == observation.exit_code
        timing = cell.metadata["execution"]
        assert timing["iopub.execute_input"] <= timing["shell.execute_reply"]
        assert timing["shell.execute_reply"].endswith("Z")
    kinds = [output["output_type"] for cell in code_cells for output in cell.outputs]
    assert {"stream", "execute_result", "error", "display_data"} <= set(kinds)
    assert any("image/png" in o.get("data", {}) for c in code_cells for o in c.outputs)
    assert any("text/html" in o.get("data", {}) for c in code_cells for o in c.outputs)
    assert code_cells[1].metadata["kernelenv"]["status"] == "error"
    meta = on_disk.metadata
    assert meta["kernelspec"]["name"] == "kernelenv"
    assert meta["language_info"]["name"] == "python"
    assert meta["kernelenv"]["episode_id"] == episode_id
    assert meta["kernelenv"]["seed"] == 7
    assert meta["kernelenv"]["steps"] == len(EPISODE_CODE)
    assert meta["kernelenv"]["versions"]["ipykernel"]


async def test_export_converts_to_html_with_nbconvert(exported):
    from nbconvert import HTMLExporter

    _, _, notebook, _ = exported
    body, _ = HTMLExporter().from_notebook_node(notebook)
    assert "<b>bold</b>" in body
    assert "data:image/png;base64," in body
    assert "ZeroDivisionError" in body
    assert "hello" in body


async def test_exported_notebook_reexecutes_with_nbclient_to_same_outputs(
    exported, shared_pool, tmp_path, no_leaks
):
    from jupyter_client import AsyncKernelManager
    from nbclient import NotebookClient

    _, _, notebook, _ = exported
    rerun = nbformat.from_dict(notebook)
    # The pool's kernelspec, so the same kind of kernel (and sandbox) runs the notebook; a
    # sandboxed kernel has no network, hence IPC sockets in a directory of its own.
    (tmp_path / "run").mkdir()
    (tmp_path / "work").mkdir()
    manager = AsyncKernelManager(
        kernel_name=shared_pool.kernel_name,
        kernel_spec_manager=shared_pool.spec_manager,
        transport="ipc",
        ip=str(tmp_path / "run" / "kernel"),
        connection_file=str(tmp_path / "run" / "connection.json"),
    )
    client = NotebookClient(
        rerun,
        km=manager,
        allow_errors=True,
        timeout=60,
        resources={"metadata": {"path": str(tmp_path / "work")}},
    )
    await client.async_execute(cleanup_kc=True)  # we made the manager: nbclient must stop it
    before = [c for c in notebook.cells if c.cell_type == "code"]
    after = [c for c in rerun.cells if c.cell_type == "code"]
    for old, new in zip(before, after, strict=True):
        assert normalise_outputs(new.outputs) == normalise_outputs(old.outputs), old.source


async def test_sync_facade_exports(tmp_path, no_leaks):
    path = tmp_path / "sync.ipynb"
    with KernelEnv().sync() as env:
        with pytest.raises(ResetNeeded):
            env.export_notebook(path)
        env.reset()
        env.step("print('from the blocking facade')")
        notebook = env.export_notebook(path)
    assert nbformat.read(path, as_version=4) == notebook
    assert notebook.cells[0].outputs[0]["text"] == "from the blocking facade\n"


def test_pure_export_of_task_timeout_and_reward():
    now = time.time()
    timeout = CodeObservation(
        status=StepStatus.TIMEOUT,
        exit_code=124,
        error=ErrorInfo(ename="TimeoutError", evalue="The step exceeded its 1 s budget"),
        reward=-0.5,
        execution_count=3,
    )
    notebook = episode_notebook(
        EpisodeInfo(episode_id="e1", task_id="t1", task_prompt="Write `f`.", grade={"score": 0.5}),
        [TimedStep(CodeAction(code="while True: pass", timeout_s=1), timeout, now, now + 1)],
    )
    nbformat.validate(notebook)
    task_cell, step_cell = notebook.cells
    assert (task_cell.cell_type, task_cell.source, task_cell.id) == (
        "markdown",
        "Write `f`.",
        "task",
    )
    assert step_cell.id == "step-1"
    assert step_cell.metadata["kernelenv"]["reward"] == -0.5
    assert step_cell.metadata["kernelenv"]["timeout_s"] == 1
    assert step_cell.metadata["kernelenv"]["error"]["ename"] == "TimeoutError"
    assert notebook.metadata["kernelenv"]["grade"] == {"score": 0.5}
    assert notebook.metadata["kernelenv"]["task_id"] == "t1"


def test_written_notebook_has_ordinary_permissions(tmp_path):
    """Readable as any file the user makes (0644 under umask 022), not mkstemp's 0600."""
    import os

    from kernelenv.episodes.export import write_notebook

    notebook = episode_notebook(EpisodeInfo(episode_id="perm"), [])
    path = write_notebook(notebook, tmp_path / "episode.ipynb")
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
