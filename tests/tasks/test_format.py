"""The task notebook format and the task library: parsing, validation errors, packaging, Jupyter."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import anyio
import nbformat
import pytest
from nbclient import NotebookClient

from kernelenv.errors import TaskFormatError, UnknownTaskError
from kernelenv.tasks.format import Family, load_task, review_answer, task_from_notebook
from kernelenv.tasks.library import SOURCE_TASKS, TaskLibrary, default_tasks_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def library() -> TaskLibrary:
    return TaskLibrary(SOURCE_TASKS)


def test_library_has_every_family_at_every_difficulty(library):
    assert len(library) >= 12
    cells = Counter((t.family, t.difficulty.value) for t in library.tasks.values())
    for family in Family:
        for difficulty in ("easy", "medium", "hard"):
            assert cells[(family, difficulty)] >= 1, (family, difficulty)
    # Seed 002's PR-triage tasks keep their ids.
    assert {"task_easy_1", "task_medium_1", "task_hard_1"} <= set(library.ids())
    assert {library.get(i).family for i in ("task_easy_1", "task_medium_1", "task_hard_1")} == {
        Family.PR_REVIEW
    }


def test_tasks_have_roles_and_pr_context(library):
    for task in library.tasks.values():
        assert task.prompt.strip() and task.solution and task.grader.strip(), task.id
        assert task.wrong, f"{task.id} has no plausible wrong attempt"
        if task.family is Family.PR_REVIEW:
            assert set(task.context) == {"code_snippet", "pr_title", "pr_description",
                                         "changed_files"}
            assert "+++ b/" in task.context["code_snippet"]  # a unified diff
            assert review_answer(task.solution[0])["file_path"] in task.context["changed_files"]
        else:
            assert task.collect.strip(), task.id


def test_unknown_task_suggests_close_names(library):
    with pytest.raises(UnknownTaskError, match="Did you mean 'task_easy_1'") as caught:
        library.get("task_easy_2")
    assert "task_easy_1" in caught.value.suggestions


def _notebook(library) -> dict:
    return nbformat.read(library.get("functions_easy_palindrome").path, as_version=4)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda nb: nb.metadata.pop("kernelenv"), "no 'kernelenv.task'"),
        (lambda nb: nb.metadata.kernelenv.task.update(difficulty="extreme"), "difficulty"),
        (lambda nb: nb.metadata.kernelenv.task.update(surprise=1), "surprise"),
        (lambda nb: setattr(nb, "cells", [c for c in nb.cells if "grader" not in c.metadata.get("tags", [])]),
         "no cell tagged 'grader'"),
        (lambda nb: next(c for c in nb.cells if "wrong" in c.metadata.get("tags", [])).update(
            cell_type="code", outputs=[], execution_count=None), "must be a raw cell"),
        (lambda nb: nb.cells[1].metadata.update(tags=["prompt", "setup"]), "more than one role"),
    ],
)
def test_malformed_notebooks_say_what_is_wrong(library, break_it, message):
    notebook = copy.deepcopy(_notebook(library))
    break_it(notebook)
    with pytest.raises(TaskFormatError, match=re.escape(message)):
        task_from_notebook(notebook)


def test_file_name_must_match_the_id(library, tmp_path):
    nbformat.write(_notebook(library), tmp_path / "renamed.ipynb")
    with pytest.raises(TaskFormatError, match="must match the file name"):
        load_task(tmp_path / "renamed.ipynb")
    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(TaskFormatError, match="not a readable notebook"):
        load_task(tmp_path / "broken.ipynb")


def test_review_cells_must_be_literal_answers():
    assert review_answer("answer = {'file_path': 'a.py', 'line_number': 3}")["line_number"] == 3
    for source in ("answer = make_review()", "x = {}", "answer = {}\nprint(1)", "answer = ["):
        with pytest.raises(TaskFormatError, match="literal"):
            review_answer(source)


def test_source_checkout_finds_its_tasks_folder():
    # In an editable install there is no packaged copy: the checkout's tasks/ is used.
    assert default_tasks_dir() == REPO / "tasks"


def test_wheel_ships_the_task_notebooks_and_the_pytest_plugin(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("kernelenv-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(
            archive.read(n).decode() for n in names if n.endswith("entry_points.txt")
        )
    shipped = {Path(n).name for n in names if n.startswith("kernelenv/_tasks/")}
    assert {p.name for p in (REPO / "tasks").glob("*.ipynb")} <= shipped
    assert "README.md" in shipped
    assert "[pytest11]" in entry_points and "kernelenv.tasks.pytest_plugin" in entry_points


@pytest.mark.anyio
async def test_task_notebooks_run_in_plain_jupyter_and_print_their_grade(library, tmp_path):
    """nbclient, its own kernels, no kernelenv machinery: every notebook grades its reference."""
    limiter = anyio.CapacityLimiter(4)
    printed: dict[str, str] = {}

    async def run(task):
        notebook = nbformat.read(task.path, as_version=4)
        workdir = tmp_path / task.id
        workdir.mkdir()
        client = NotebookClient(notebook, timeout=120, resources={"metadata": {"path": str(workdir)}})
        async with limiter:
            await client.async_execute()
        printed[task.id] = "".join(
            out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", [])
            if out.get("name") == "stdout"
        )

    async with anyio.create_task_group() as group:
        for task in library.tasks.values():
            group.start_soon(run, task)
    for task_id, text in printed.items():
        score = float(re.findall(r"score: ([0-9.]+)", text)[-1])
        assert score >= 0.95, (task_id, text)
    assert set(printed) == set(library.ids())
