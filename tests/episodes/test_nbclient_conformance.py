"""nbclient's own conformance notebooks replay identically with kernelenv, run as nbclient runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernelenv import KernelEnv, KernelPool, SandboxConfig, replay_notebook
from kernelenv.episodes.compare import CompareOptions
from kernelenv.episodes.replay import compare_step

pytestmark = pytest.mark.anyio

NOTEBOOKS = Path(__file__).resolve().parent / "data" / "nbclient"

# nbclient 0.11.0 tests/test_client.py::test_run_all_notebooks: the options of each notebook
# (every other one runs with nbclient's defaults: allow_errors=False, timeout=None).
NBCLIENT_OPTIONS = {
    "Interrupt.ipynb": {"timeout_s": 3.0, "allow_errors": True},
    "Skip Exceptions.ipynb": {"allow_errors": True},
}

# Which tolerance each notebook needs (the strict option under which it must diverge): the
# tolerances are doing real work, not hiding everything.
NEEDS_TOLERANCE = {
    "Interrupt.ipynb": "strict_tracebacks",  # recorded by IPython < 8: <ipython-input-...>
    "Skip Exceptions.ipynb": "strict_tracebacks",
    "SVG.ipynb": "strict_svg",  # recorded with sorted attributes
    "JupyterWidgets.ipynb": "strict_widget_ids",  # random model ids
}


@pytest.fixture(scope="module")
async def notebook_pool(anyio_backend):
    """Kernels that may read the notebooks' folder (the sandbox shows them nothing else of
    the checkout), as nbclient's run in the notebook's directory."""
    config = SandboxConfig(extra_readable=(str(NOTEBOOKS),))
    async with KernelPool(size=2, sandbox=config) as pool:
        yield pool


def test_all_sixteen_notebooks_are_vendored():
    names = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
    assert len(names) == 16, names
    assert (NOTEBOOKS / "LICENSE").is_file() and (NOTEBOOKS / "python.png").is_file()


@pytest.mark.parametrize("name", sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")))
async def test_nbclient_notebook_replays_identically(name, notebook_pool):
    if name == "JupyterWidgets.ipynb":
        pytest.importorskip("ipywidgets")  # the kernel runs this interpreter (the test extra)
    options = {"allow_errors": False, **NBCLIENT_OPTIONS.get(name, {})}
    async with KernelEnv(pool=notebook_pool) as env:
        report = await replay_notebook(
            NOTEBOOKS / name,
            env,
            cwd="notebook",  # nbclient's resources.metadata.path
            options=CompareOptions(compare_execution_count=True),  # nbclient compares counts
            **options,
        )
    assert report.ok, report.summary()
    ran = [step for step in report.steps if step.observation is not None]
    assert ran, "no cell was run"
    strict = NEEDS_TOLERANCE.get(name)
    if strict is not None:
        strict_options = CompareOptions(**{strict: True})
        diverged = [
            compare_step(s.step, s.observation, options=strict_options, outputs=s.outputs)
            for s in ran
        ]
        assert any(diverged), f"{name} should need the tolerance that {strict} turns off"
