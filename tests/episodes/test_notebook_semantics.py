"""Notebook semantics over a whole episode, on real kernels: display updates across steps in
observations, exports and recovered journals; clear_output(wait=True); ipywidgets whose state
an exported notebook keeps for JupyterLab."""

from __future__ import annotations

import re

import nbformat
import pytest

from kernelenv import Journal, KernelEnv
from kernelenv.episodes.journal import read_journal
from kernelenv.episodes.notebook_state import DISPLAY_UPDATES_KEY, WIDGET_STATE_MIME

pytestmark = pytest.mark.anyio

DISPLAY_STEPS = [
    (
        "from IPython.display import display, clear_output\n"
        "handle = display('Hello', display_id='greeting')"
    ),
    "handle.update('world')\nprint('updated')",
    "print('a'); clear_output(wait=True); print('b')",
    "gone = display('shown', display_id='gone'); clear_output()",
    "gone.update('back?')",
    "_ = display('again', display_id='greeting')",  # a new display with a known id updates too
]


async def test_display_updates_across_steps_in_observations_export_and_journal(
    shared_pool, tmp_path
):
    journal = Journal(tmp_path / "journal")
    async with KernelEnv(pool=shared_pool, journal=journal) as env:
        await env.reset()
        observations = [await env.step(code) for code in DISPLAY_STEPS]
        notebook = await env.export_notebook(tmp_path / "episode.ipynb")
        episode_id = env.state.episode_id
    first, update, waited, cleared, stale, again = observations

    # The observation of step 1 stays what the agent saw; step 2 reports what it changed.
    assert [o["data"]["text/plain"] for o in first.outputs] == ["'Hello'"]
    assert update.outputs == [{"output_type": "stream", "name": "stdout", "text": "updated\n"}]
    assert update.metadata[DISPLAY_UPDATES_KEY] == [
        {
            "display_id": "greeting",
            "step": 1,
            "output_index": 0,
            "data": {"text/plain": "'world'"},
            "metadata": {},
        }
    ]
    assert [o.get("text") for o in waited.outputs] == ["b\n"]
    assert cleared.outputs == []
    assert DISPLAY_UPDATES_KEY not in stale.metadata  # a cleared output is not brought back
    assert [(u["step"], u["data"]["text/plain"]) for u in again.metadata[DISPLAY_UPDATES_KEY]] == [
        (1, "'again'")
    ]

    # The export shows each output as it ended up, where it was displayed.
    def shown(nb):
        code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
        return [[output.get("data", {}).get("text/plain") for output in c.outputs]
                for c in code_cells]

    assert shown(notebook)[0] == ["'again'"]
    assert shown(notebook)[5] == ["'again'"]
    reread = nbformat.read(tmp_path / "episode.ipynb", as_version=4)
    nbformat.validate(reread)
    assert shown(reread) == shown(notebook)
    # Journal recovery folds the same observations the same way.
    recovered = read_journal(journal.path_of(episode_id)).notebook()
    assert shown(recovered) == shown(notebook)


async def test_widget_state_is_saved_in_the_exported_notebook(shared_pool, tmp_path):
    pytest.importorskip("ipywidgets")
    journal = Journal(tmp_path / "journal")
    path = tmp_path / "widgets.ipynb"
    async with KernelEnv(pool=shared_pool, journal=journal) as env:
        await env.reset()
        shown = await env.step(
            "import ipywidgets as widgets\n"
            "slider = widgets.IntSlider(value=3, description='n')\nslider"
        )
        changed = await env.step("slider.value = 7")
        await env.export_notebook(path)
        episode_id = env.state.episode_id
    [view] = [o for o in shown.outputs if "application/vnd.jupyter.widget-view+json" in o["data"]]
    model_id = view["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert changed.metadata["widget_state"][model_id]["state"] == {"value": 7}

    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    saved = notebook.metadata["widgets"][WIDGET_STATE_MIME]
    assert (saved["version_major"], saved["version_minor"]) == (2, 0)
    slider = saved["state"][model_id]
    assert slider["model_name"] == "IntSliderModel"
    assert slider["model_module"] == "@jupyter-widgets/controls"
    assert slider["state"]["value"] == 7 and slider["state"]["description"] == "n"
    # Every model the slider refers to (its layout and style) is saved too, so a frontend
    # can build the view; the cell metadata does not repeat the state.
    references = re.findall(r"IPY_MODEL_([0-9a-f]+)", str(slider["state"]))
    assert references and all(ref in saved["state"] for ref in references)
    assert "widget_state" not in str(notebook.cells[1].metadata)
    recovered = read_journal(journal.path_of(episode_id)).notebook()
    assert recovered.metadata["widgets"] == notebook.metadata["widgets"]
    # nbconvert's HTML embeds the state for the widget manager, as for nbclient's notebooks.
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_notebook_node(notebook)
    assert WIDGET_STATE_MIME in html and model_id in html


async def test_a_fork_updates_displays_it_inherited(shared_pool):
    async with KernelEnv(pool=shared_pool) as parent:
        await parent.reset()
        await parent.step("handle = display('parent', display_id='shared')")
        [child] = await parent.fork(1)
        async with child:
            update = await child.step("handle.update('child')")
            notebook = await child.export_notebook()
        parent_notebook = await parent.export_notebook()
    assert [(u["step"], u["data"]["text/plain"]) for u in update.metadata[DISPLAY_UPDATES_KEY]] == [
        (1, "'child'")
    ]
    inherited = notebook.cells[0]
    assert inherited.metadata["kernelenv"]["inherited"] is True
    assert inherited.outputs[0]["data"]["text/plain"] == "'child'"
    # The parent's own notebook is untouched by its child.
    assert parent_notebook.cells[0].outputs[0]["data"]["text/plain"] == "'parent'"
