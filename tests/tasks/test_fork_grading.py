"""Grading in throwaway forks of warm kernels gives the rows the three-kernel path gives, and an
attempt cannot reach the warm kernels or the next attempt."""

from __future__ import annotations

import pytest

from kernelenv import KernelEnv, KernelPool
from kernelenv.tasks.evaluation import evaluate
from kernelenv.tasks.fork_grading import WarmGraders, forkable
from kernelenv.tasks.library import default_library

from test_evaluation import CASES

pytestmark = pytest.mark.anyio

SETTLED = ("task_id", "library_task_id", "passed", "score", "status", "feedback")


def rows(report) -> list[dict]:
    return [{key: getattr(result, key) for key in SETTLED} for result in report.results]


async def both_ways(items, library) -> tuple[list[dict], list[dict]]:
    async with KernelPool(size=4) as pool:
        forked = await evaluate(items, library=library, workers=2, pool=pool)
        fresh = await evaluate(items, library=library, workers=2, pool=pool, forks=False)
    return rows(forked), rows(fresh)


async def test_eval_rows_match_the_three_kernel_path_on_imported_tasks(imported_library):
    items = [{"task_id": t, "completion": c} for t, c, *_ in CASES]
    forked, fresh = await both_ways(items, imported_library)
    assert forked == fresh


async def test_eval_rows_match_the_three_kernel_path_on_shipped_tasks():
    library = default_library()
    items = []
    for task in library.tasks.values():
        if task.uses_review_actions:
            continue
        items.append({"task_id": task.id, "completion": "\n\n".join(task.solution)})
        if task.wrong:
            items.append({"task_id": task.id, "completion": "\n\n".join(task.wrong)})
    assert any(forkable(library.get(item["task_id"])) for item in items)
    forked, fresh = await both_ways(items, library)
    assert forked == fresh
    assert any(row["passed"] for row in forked) and not all(row["passed"] for row in forked)


async def test_an_attempt_cannot_leave_anything_for_the_next_one(imported_library):
    library = default_library()
    task = library.get("functions_easy_palindrome")
    right = "\n\n".join(task.solution)
    poison = (
        "import builtins, os, signal\n"
        "builtins.len = lambda x: 0\n"  # its own copy of the warm kernel's memory
        "open('json.py', 'w').write('raise SystemExit')\n"  # its own copy of the folder
        "os.kill(os.getppid(), signal.SIGKILL)\n"  # the warm kernel itself: replaced
    )
    async with KernelPool(size=2) as pool:
        graders = WarmGraders(pool)
        try:
            results = [await graders.grade_steps(task, [(code, 5.0)])
                       for code in (right, poison, right)]
        finally:
            await graders.aclose()
    assert [r.passed for r in results] == [True, False, True]
    assert "died" in results[1].feedback


async def test_env_grade_keeps_its_warm_kernels_and_grades_a_seeded_episode():
    task = default_library().get("data_analysis_easy_readings")
    async with KernelPool(size=2) as pool, KernelEnv(pool=pool) as env:
        await env.reset(task_id=task.id, seed=3)
        await env.step(task.solution[0])
        first = await env.grade()
        attempt = env._graders._attempt  # the same warm kernels serve the next grades
        again = await env.grade()
        assert env._graders._attempt is attempt
        assert first.score == again.score == 1.0


async def test_an_attempt_that_kills_the_warm_kernel_fails_alone_in_its_batch(imported_library):
    killer = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
    right = "    return a + b\n"
    items = [{"task_id": "HumanEval/0", "completion": c} for c in (right, killer, right, right)]
    async with KernelPool(size=2) as pool:
        report = await evaluate(items, library=imported_library, workers=1, pool=pool)
    assert [r.passed for r in report.results] == [True, False, True, True]
    assert report.results[1].status == "kernel_died"
