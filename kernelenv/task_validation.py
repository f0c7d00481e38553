"""Validation of task notebooks: the reference must pass, an empty attempt must fail, a wrong one in between."""

from __future__ import annotations

from collections.abc import Iterable

import anyio
from pydantic import BaseModel, Field

from .grading import Grade, grade_answer, grade_code_attempt
from .pool import KernelPool
from .task_format import Task, review_answer

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


async def grade_attempt(pool: KernelPool, task: Task, cells: list[str]) -> Grade:
    """Grade attempt cells as the env would: review cells are submissions, code cells steps."""
    if task.uses_review_actions:
        answer = review_answer(cells[-1]) if cells else {}
        return await grade_answer(pool, task, answer)
    steps = [(cell, task.limits.step_timeout_s) for cell in cells]
    return await grade_code_attempt(pool, task, steps)


# attempt -> (rule shown in reports, check on the score)
ATTEMPT_RULES = {
    "reference": (f">= {REFERENCE_MIN}", lambda score: score >= REFERENCE_MIN),
    "empty": (f"<= {EMPTY_MAX}", lambda score: score <= EMPTY_MAX),
    "wrong": (f"> {EMPTY_MAX} and < {REFERENCE_MIN}", lambda s: EMPTY_MAX < s < REFERENCE_MIN),
}


def attempts_of(task: Task) -> list[str]:
    """The attempts a task can be validated with (``wrong`` only when it has one)."""
    return ["reference", "empty"] + (["wrong"] if task.wrong else [])


async def check_attempt(pool: KernelPool, task: Task, attempt: str) -> AttemptCheck:
    """Grade one of the task's attempts (reference, empty or wrong) and check its score."""
    cells = {"reference": task.solution, "empty": [], "wrong": task.wrong}[attempt]
    grade = await grade_attempt(pool, task, cells)
    expected, rule = ATTEMPT_RULES[attempt]
    return AttemptCheck(
        attempt=attempt,
        score=grade.score,
        expected=expected,
        ok=rule(grade.score),
        feedback=grade.feedback,
    )


async def validate_task(pool: KernelPool, task: Task) -> TaskValidation:
    """Replay the reference, an empty attempt and the wrong attempt (if any) and check scores."""
    return TaskValidation(
        task_id=task.id,
        family=task.family.value,
        difficulty=task.difficulty.value,
        checks=[await check_attempt(pool, task, attempt) for attempt in attempts_of(task)],
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
