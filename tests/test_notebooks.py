"""The notebooks/ folder: clean generated JSON, and every notebook runs in a real kernel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", NOTEBOOKS_DIR / "build_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
NAMES = sorted(GENERATOR.NOTEBOOKS)


def test_every_notebook_is_generated_and_has_no_outputs():
    on_disk = sorted(path.name for path in NOTEBOOKS_DIR.glob("*.ipynb"))
    assert on_disk == NAMES
    for name in NAMES:
        notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
        nbformat.validate(notebook)
        assert notebook == GENERATOR.build(name), f"{name} is stale: run build_notebooks.py"
        code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code_cells and not any(cell.outputs for cell in code_cells)


@pytest.mark.anyio
@pytest.mark.parametrize("name", NAMES)
async def test_notebook_executes_in_a_real_kernel(name, tmp_path, no_leaks):
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name="python3",  # the plain IPython kernel of this environment, as a user has
        timeout=180,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    await client.async_execute()  # raises CellExecutionError on any failing cell
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells)
    assert not any(o["output_type"] == "error" for c in code_cells for o in c.outputs)
