"""Task validation: the reference must pass, an empty attempt fail, a wrong one land between."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio
from pydantic import BaseModel, Field

from ..runtime.pool import KernelPool
from .format import Task, review_answer
from .grading import Grade, collect_answer, grade_answers

REFERENCE_MIN = 0.95
EMPTY_MAX = 0.05


class AttemptCheck(BaseModel):
    """One replayed attempt and whether its grade is what the task promises."""

    attempt: str = Field(description="reference, empty or wrong.")
    score: float = Field(description="The grade's score.")
    expected: str = Field(description="The rule the score must meet, e.g. '>= 0.95'.")
    ok: bool = Field(description="True when the score meets the rule.")
    feedback: str = Field(description="The grader's feedback.")


class TaskValidation(BaseModel):
    """The validation of one task."""

    task_id: str = Field(description="The validated task.")
    family: str = Field(description="Its family.")
    difficulty: str = Field(description="Its difficulty.")
    checks: list[AttemptCheck] = Field(description="One check per attempt.")

    @property
    def ok(self) -> bool:
        """True when every attempt scored as promised."""
        return all(check.ok for check in self.checks)


async def attempt_answer(
    pool: KernelPool, task: Task, cells: list[str]
) -> tuple[Any, str | None]:
    """The answer of attempt cells, taken as the env takes it.

    Review cells are submissions; code cells are replayed as steps.

    Returns:
        ``(answer, None)``, or ``(None, what went wrong)``.
    """
    if task.uses_review_actions:
        return (review_answer(cells[-1]) if cells else {}), None
    steps = [(cell, task.limits.step_timeout_s) for cell in cells]
    return await collect_answer(pool, task, steps)


async def grade_attempts(pool: KernelPool, task: Task, attempts: list[list[str]]) -> list[Grade]:
    """Grade several attempts at a task: each replayed in its own kernel, graded in one."""
    collected = [await attempt_answer(pool, task, cells) for cells in attempts]
    answers = [answer for answer, problem in collected if problem is None]
    graded = iter(await grade_answers(pool, task, answers) if answers else [])
    return [
        next(graded) if problem is None else Grade.failed(task, problem)
        for _, problem in collected
    ]


# attempt -> (rule shown in reports, check on the score)
ATTEMPT_RULES = {
    "reference": (f">= {REFERENCE_MIN}", lambda score: score >= REFERENCE_MIN),
    "empty": (f"<= {EMPTY_MAX}", lambda score: score <= EMPTY_MAX),
    "wrong": (f"> {EMPTY_MAX} and < {REFERENCE_MIN}", lambda s: EMPTY_MAX < s < REFERENCE_MIN),
}


def attempts_of(task: Task) -> list[str]:
    """The attempts a task can be validated with (``wrong`` only when it has one)."""
    return ["reference", "empty"] + (["wrong"] if task.wrong else [])


def _check(attempt: str, grade: Grade) -> AttemptCheck:
    expected, rule = ATTEMPT_RULES[attempt]
    return AttemptCheck(
        attempt=attempt,
        score=grade.score,
        expected=expected,
        ok=rule(grade.score),
        feedback=grade.feedback,
    )


def _cells(task: Task, attempt: str) -> list[str]:
    return {"reference": task.solution, "empty": [], "wrong": task.wrong}[attempt]


async def check_attempt(pool: KernelPool, task: Task, attempt: str) -> AttemptCheck:
    """Grade one of the task's attempts (reference, empty or wrong) and check its score."""
    (grade,) = await grade_attempts(pool, task, [_cells(task, attempt)])
    return _check(attempt, grade)


async def validate_task(pool: KernelPool, task: Task) -> TaskValidation:
    """Replay the reference, an empty attempt and the wrong attempt (if any) and check scores."""
    attempts = attempts_of(task)
    grades = await grade_attempts(pool, task, [_cells(task, a) for a in attempts])
    return TaskValidation(
        task_id=task.id,
        family=task.family.value,
        difficulty=task.difficulty.value,
        checks=[_check(attempt, grade) for attempt, grade in zip(attempts, grades, strict=True)],
    )


async def validate_tasks(
    tasks: Iterable[Task], *, pool: KernelPool | None = None, jobs: int = 2
) -> list[TaskValidation]:
    """Validate tasks, ``jobs`` at a time, on ``pool`` (default: a pool of its own)."""
    tasks = list(tasks)
    results: dict[str, TaskValidation] = {}
    limiter = anyio.CapacityLimiter(max(1, jobs))

    async def one(task: Task, pool: KernelPool) -> None:
        async with limiter:
            results[task.id] = await validate_task(pool, task)

    async def run_all(pool: KernelPool) -> None:
        async with anyio.create_task_group() as group:
            for task in tasks:
                group.start_soon(one, task, pool)

    if pool is not None:
        await run_all(pool)
    else:
        async with KernelPool(size=min(2 * jobs, 4)) as own_pool:
            await run_all(own_pool)
    return [results[task.id] for task in tasks]
