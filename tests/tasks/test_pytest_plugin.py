"""The pytest plugin (pytest11 entry point), tested with pytest's own pytester."""

from __future__ import annotations

import nbformat
import pytest

from kernelenv.tasks.library import SOURCE_TASKS

pytest_plugins = ["pytester"]


def copy_task(pytester: pytest.Pytester, task_id: str, new_id: str | None = None, edit=None):
    notebook = nbformat.read(SOURCE_TASKS / f"{task_id}.ipynb", as_version=4)
    if new_id:
        notebook.metadata.kernelenv.task.id = new_id
    if edit:
        edit(notebook)
    nbformat.write(notebook, pytester.path / f"{new_id or task_id}.ipynb")


def cell_tagged(notebook, tag):
    return next(c for c in notebook.cells if tag in c.metadata.get("tags", []))


def test_collection_is_opt_in(pytester):
    copy_task(pytester, "task_easy_1")
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    pytester.makeini("[pytest]\nkernelenv_tasks = true\n")
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines([
        "task_easy_1.ipynb::reference", "task_easy_1.ipynb::empty", "task_easy_1.ipynb::wrong",
    ])


def test_task_notebooks_run_as_tests(pytester):
    copy_task(pytester, "task_easy_1")

    def reference_is_the_wrong_attempt(notebook):
        cell_tagged(notebook, "solution").source = cell_tagged(notebook, "wrong").source

    copy_task(pytester, "task_medium_1", "task_medium_broken", reference_is_the_wrong_attempt)
    copy_task(pytester, "task_hard_1", "task_hard_malformed",
              lambda nb: nb.cells.remove(cell_tagged(nb, "grader")))
    plain = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nbformat.write(plain, pytester.path / "not_a_task.ipynb")  # ignored

    result = pytester.runpytest("--kernelenv-tasks", "--continue-on-collection-errors", "-rfE")
    result.assert_outcomes(passed=5, failed=1, errors=1)
    result.stdout.fnmatch_lines([
        "task_hard_malformed.ipynb: no cell tagged 'grader'",
        "task_medium_broken: the reference attempt scored 0.48*, expected >= 0.95*",
    ])
    assert "not_a_task" not in result.stdout.str()


def test_kernelenv_env_fixture_gives_a_ready_env(pytester):
    # The fixture's env resets into the ini's task folder.
    (pytester.path / "mytasks").mkdir()
    notebook = nbformat.read(SOURCE_TASKS / "task_easy_1.ipynb", as_version=4)
    notebook.metadata.kernelenv.task.id = "my_review"
    nbformat.write(notebook, pytester.path / "mytasks" / "my_review.ipynb")
    pytester.makeini("[pytest]\nkernelenv_tasks_dir = mytasks\n")
    pytester.makepyfile(
        """
        from kernelenv.models import ReviewAction

        def test_ready_at_once(kernelenv_env):
            assert kernelenv_env.step("6 * 7").return_value == "42"

        def test_review_episode(kernelenv_env):
            obs = kernelenv_env.reset(task_id="my_review")
            assert obs.task_context["pr_title"].startswith("Add paginate()")
            assert kernelenv_env.step("len(open('pr.diff').read()) > 0").return_value == "True"
            scored = kernelenv_env.step(ReviewAction(file_path="app/pagination.py"))
            assert 0 < scored.reward < 1 and scored.previous_feedback
            assert kernelenv_env.grade().score == scored.reward
            assert kernelenv_env.state.last_score == scored.reward
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)
