"""Task episodes on KernelEnv: reset(task_id=...), review submissions, limits, grade()."""

from __future__ import annotations

import shutil

import nbformat
import pytest
from pydantic import ValidationError

from kernelenv import CodeAction, KernelEnv, KernelPool, StepStatus
from kernelenv.errors import InvalidActionError, TaskFormatError, UnknownTaskError
from kernelenv.models import ReviewAction, parse_action
from kernelenv.tasks.format import review_answer
from kernelenv.tasks.library import SOURCE_TASKS, TaskLibrary, default_library

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def pool(anyio_backend):
    async with KernelPool(size=2) as pool:
        yield pool


@pytest.fixture
async def env(pool, no_leaks):
    async with KernelEnv(pool=pool) as env:
        yield env


def reference_review(task_id: str) -> ReviewAction:
    return ReviewAction(**review_answer(default_library().get(task_id).solution[0]))


def wrong_review(task_id: str) -> ReviewAction:
    return ReviewAction(**review_answer(default_library().get(task_id).wrong[0]))


async def test_reset_with_a_task_shows_prompt_and_context_and_runs_setup(env):
    obs = await env.reset(task_id="task_medium_1", episode_id="pr-1")
    assert (obs.task_id, obs.difficulty) == ("task_medium_1", "medium")
    assert "Review pull request #1317" in obs.task_description
    assert set(obs.task_context) == {"code_snippet", "pr_title", "pr_description", "changed_files"}
    assert "+++ b/services/user_search.py" in obs.task_context["code_snippet"]
    state = env.state
    assert (state.episode_id, state.task_id, state.difficulty, state.last_score) == (
        "pr-1", "task_medium_1", "medium", None
    )
    # The setup put the PR in the working directory, silently (the agent's first cell is In[1]).
    probe = await env.step(
        "import pathlib\n"
        "print(sorted(str(p) for p in pathlib.Path('pr').rglob('*.py')))\n"
        "print(pathlib.Path('pr.diff').read_text().splitlines()[0])"
    )
    assert probe.stdout.splitlines() == [
        "['pr/api/admin.py', 'pr/services/user_search.py']", "--- /dev/null"
    ]
    assert probe.execution_count == 1


async def test_unknown_task_is_refused_before_anything_starts(env):
    with pytest.raises(UnknownTaskError, match="Did you mean 'task_hard_1'"):
        await env.reset(task_id="task_hard_2")
    assert env.episode is None
    obs = await env.reset()  # the env is still usable, and a plain episode has no task
    assert obs.task_id is None and env.state.task_id is None


async def test_review_submissions_are_graded_with_feedback(env):
    await env.reset(task_id="task_hard_1")
    explore = await env.step("print(open('pr/rates/cache.py').read().count('self._rates'))")
    assert explore.stdout == "4\n"
    first = await env.step(wrong_review("task_hard_1"))
    assert 0.0 < first.reward < 0.95 and not first.done
    assert first.previous_feedback and "line number" in first.previous_feedback
    assert first.metadata["grade"]["components"]["file"] == 1.0
    assert env.state.last_score == first.reward and env.state.step_count == 2
    second = await env.step(reference_review("task_hard_1"))
    assert 0.95 <= second.reward < 1.0 and second.done
    assert (await env.grade()).score == second.reward  # grade() reads the last submission


async def test_reviews_are_steps_of_the_episode_in_export_and_journal(pool, tmp_path, no_leaks):
    from kernelenv import Journal
    from kernelenv.episodes.journal import recover_all

    async with KernelEnv(pool=pool, journal=Journal(tmp_path / "journal")) as env:
        await env.reset(task_id="task_easy_1", episode_id="reviewed")
        await env.step("print(1)")
        graded = await env.step(reference_review("task_easy_1"))
        notebook = await env.export_notebook(tmp_path / "episode.ipynb")
        nbformat.validate(notebook)
        kinds = [cell.cell_type for cell in notebook.cells]
        assert kinds == ["markdown", "code", "markdown"]  # task prompt, code, review
        review_cell = notebook.cells[-1]
        meta = review_cell.metadata["kernelenv"]
        assert meta["role"] == "review" and meta["reward"] == graded.reward
        assert meta["review"]["file_path"] == reference_review("task_easy_1").file_path
        assert "Review submitted" in review_cell.source
        # The journal keeps the review too: a recovered episode has all three cells.
        recovered = recover_all(tmp_path / "journal", tmp_path / "recovered")
        assert len(recovered) == 1
        again = nbformat.read(recovered[0], as_version=4)
        assert [c.cell_type for c in again.cells] == kinds
        assert again.cells[-1].metadata["kernelenv"]["review"] == meta["review"]


async def test_submissions_are_limited_and_request_ids_are_idempotent(env):
    await env.reset(task_id="task_easy_1")
    blank = ReviewAction(request_id="r1")
    first = await env.step(blank)
    assert first.reward == 0.01
    assert (await env.step(blank)).model_dump() == first.model_dump()  # recorded, not regraded
    await env.step(ReviewAction(review="second"))
    third = await env.step(ReviewAction(review="third"))
    assert third.done and "0 submissions left" in third.stdout
    over = await env.step(reference_review("task_easy_1"))
    assert over.done and "no submissions left" in over.stderr
    assert over.reward == third.reward  # the late perfect review did not count
    assert env.state.step_count == 4


async def test_review_on_a_code_task_is_an_observation_not_a_crash(env):
    await env.reset(task_id="functions_easy_palindrome")
    obs = await env.step(reference_review("task_easy_1"))
    assert obs.status is StepStatus.ERROR and "takes code" in obs.stderr
    await env.reset()
    with pytest.raises(InvalidActionError, match="task_id"):
        await env.step(ReviewAction(review="no task here"))


async def test_multi_step_task_needs_state_across_steps_and_grades_by_replay(env):
    task = default_library().get("multi_step_easy_pagination")
    await env.reset(task_id=task.id, seed=3)
    twice = await env.step("fetch_orders()\nfetch_orders()")
    assert twice.error is not None and twice.error.ename == "StepLimitError"
    for cell in task.solution:
        obs = await env.step(cell)
        assert obs.status is StepStatus.OK, obs.stderr
    grade = await env.grade()
    assert grade.score == 1.0 and grade.passed and env.state.last_score == 1.0
    assert grade.components == {"orders": 1.0, "paid_total": 1.0}


async def test_steps_that_timed_out_are_not_replayed(env):
    task = default_library().get("functions_easy_palindrome")
    await env.reset(task_id=task.id)
    slow = await env.step(CodeAction(code="import time\ntime.sleep(30)", timeout_s=0.5))
    assert slow.status is StepStatus.TIMEOUT
    await env.step(task.solution[0])
    assert (await env.grade()).score == 1.0


async def test_budgets_are_recorded_as_run_and_bounded_by_the_task(env):
    task = default_library().get("functions_easy_palindrome")
    limits = task.limits
    await env.reset(task_id=task.id)
    await env.step("x = 1")  # no budget asked: the task's default
    await env.step("x = 2", timeout_s=limits.step_timeout_s + 5)  # a request's budget
    await env.step(CodeAction(code="x = 3", timeout_s=10_000))  # more than the task allows
    budgets = [record.action.timeout_s for record in env.episode.steps]
    assert budgets == [limits.step_timeout_s, limits.step_timeout_s + 5, limits.max_step_timeout_s]
    notebook = await env.export_notebook()
    exported = [cell.metadata["kernelenv"]["timeout_s"] for cell in notebook.cells[1:]]
    assert exported == budgets  # replays of the notebook run them alike
    assert limits.step_budget(10_000) == limits.max_step_timeout_s  # grading bounds them too


async def test_max_steps_ends_the_episode(pool, tmp_path, no_leaks):
    source = SOURCE_TASKS / "functions_easy_palindrome.ipynb"
    notebook = nbformat.read(source, as_version=4)
    notebook.metadata.kernelenv.task.limits.max_steps = 2
    nbformat.write(notebook, tmp_path / source.name)
    shutil.copy(SOURCE_TASKS / "README.md", tmp_path)  # other files are ignored
    async with KernelEnv(pool=pool, task_library=TaskLibrary(tmp_path)) as env:
        await env.reset(task_id="functions_easy_palindrome")
        assert not (await env.step("x = 1")).done
        assert (await env.step("x += 1")).done


async def test_a_task_whose_setup_fails_is_a_clear_error(pool, tmp_path, no_leaks):
    notebook = nbformat.read(SOURCE_TASKS / "data_analysis_easy_readings.ipynb", as_version=4)
    setup = next(c for c in notebook.cells if "setup" in c.metadata.get("tags", []))
    setup.source = "raise RuntimeError('data source missing')"
    nbformat.write(notebook, tmp_path / "data_analysis_easy_readings.ipynb")
    async with KernelEnv(pool=pool, task_library=TaskLibrary(tmp_path)) as env:
        with pytest.raises(TaskFormatError, match="(?s)setup of task .* failed.*data source missing"):
            await env.reset(task_id="data_analysis_easy_readings")
        assert env.episode is None and env.kernel is None
        assert (await env.reset()).task_id is None  # the env is still usable


def test_parse_action_tells_reviews_from_code():
    review = parse_action({"review": "bug", "file_path": "a.py", "line_number": 3})
    assert isinstance(review, ReviewAction) and review.line_number == 3
    assert isinstance(parse_action({"code": "1"}), CodeAction)
    with pytest.raises(ValidationError, match="code"):
        parse_action({})
    with pytest.raises(ValidationError, match="review"):
        parse_action({"code": "1", "review": "both kinds"})
    with pytest.raises(ValidationError, match="confidence"):
        parse_action({"review": "x", "confidence": 3})
