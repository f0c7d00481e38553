"""A graded task inside an episode: setup at reset, task fields, review submissions, grading."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio.to_thread

from ..errors import TaskFormatError
from ..models import CodeAction, CodeObservation, ReviewAction, StepRecord, StepStatus
from .fork_grading import WarmGraders, forkable
from .format import Task
from .grading import Grade, grade_answer, grade_code_attempt
from .service import TaskService

if TYPE_CHECKING:
    from ..runtime.kernel import Kernel
    from ..runtime.pool import KernelPool

# Replayed steps that cannot have left state worth grading.
_NOT_REPLAYED = (StepStatus.TIMEOUT, StepStatus.KERNEL_DIED, StepStatus.ABORTED)


@dataclass
class TaskRun:
    """The task of the current episode, its host-side service, and the grades given so far."""

    task: Task
    submissions: list[tuple[ReviewAction, Grade]] = field(default_factory=list)
    last_grade: Grade | None = None
    service: TaskService | None = None


async def start_task(kernel: Kernel, task: Task) -> TaskRun:
    """Run the task's setup in the episode's kernel (silently: the agent's first cell is In[1]).

    A task's service starts on the host, fresh for the episode; the caller offers its
    tools to the kernel (see :mod:`kernelenv.tasks.service`).

    Raises:
        TaskFormatError: the setup or the service failed (a broken task, not the agent's fault).
    """
    # Compiling and running the service's cells takes milliseconds: off the event loop.
    service = await anyio.to_thread.run_sync(TaskService, task) if task.service.strip() else None
    if task.setup.strip():
        outcome = await kernel.execute(
            task.setup, timeout_s=task.limits.grade_timeout_s, silent=True
        )
        observation = outcome.observation
        if observation.status is not StepStatus.OK:
            detail = observation.error.text if observation.error else observation.status.value
            raise TaskFormatError(f"the setup of task {task.id!r} failed: {detail}")
    return TaskRun(task, service=service)


def add_task_fields(observation: CodeObservation, task: Task) -> CodeObservation:
    """Fill the observation's task fields (prompt and context; never solution or grader)."""
    observation.task_id = task.id
    observation.difficulty = task.difficulty.value
    observation.task_description = task.prompt
    observation.task_context = dict(task.context)
    return observation


async def submit_review(pool: KernelPool, run: TaskRun, action: ReviewAction) -> CodeObservation:
    """Grade a review submission; the observation carries the reward and the feedback."""
    task = run.task
    if not task.uses_review_actions:
        return CodeObservation(
            status=StepStatus.ERROR,
            exit_code=StepStatus.ERROR.exit_code,
            stderr=f"task {task.id!r} ({task.family.value}) takes code, not a review",
            task_id=task.id,
        )
    if len(run.submissions) >= task.limits.max_submissions:
        grade = run.last_grade
        assert grade is not None
        return CodeObservation(
            done=True,
            reward=grade.score,
            stderr=f"no submissions left (limit {task.limits.max_submissions})",
            previous_feedback=grade.feedback,
            task_id=task.id,
            difficulty=task.difficulty.value,
        )
    fields = action.model_dump(exclude={"request_id"})
    grade = await grade_answer(pool, task, fields)
    run.submissions.append((action, grade))
    run.last_grade = grade
    left = task.limits.max_submissions - len(run.submissions)
    return CodeObservation(
        stdout=f"Review graded: score {grade.score:.4f} ({left} submissions left).\n",
        done=grade.passed or left == 0,
        reward=grade.score,
        previous_feedback=grade.feedback,
        task_id=task.id,
        difficulty=task.difficulty.value,
        metadata={"grade": grade.model_dump()},
    )


async def grade_run(
    pool: KernelPool,
    run: TaskRun,
    steps: Sequence[StepRecord],
    prelude: str = "",
    graders: WarmGraders | None = None,
) -> Grade:
    """Grade the episode so far: the last review, or the replayed code steps (in throwaway
    forks of ``graders``' warm kernels when given and the task allows, see
    :mod:`kernelenv.tasks.fork_grading`; else in fresh kernels of ``pool``)."""
    task = run.task
    if task.uses_review_actions:
        grade = run.last_grade or await grade_answer(pool, task, {})
    else:
        # Each step is replayed with the budget it ran with (recorded in its action), bounded
        # again by the task: a step that was slow but correct stays correct, and a recorded
        # budget cannot buy more grading time than the task allows.
        cells = [
            (record.action.code, task.limits.step_budget(record.action.timeout_s))
            for record in steps
            if isinstance(record.action, CodeAction)
            and record.observation.status not in _NOT_REPLAYED
        ]
        if graders is not None and forkable(task):
            grade = await graders.grade_steps(task, cells, prelude=prelude)
        else:
            grade = await grade_code_attempt(pool, task, cells, prelude=prelude)
    run.last_grade = grade
    return grade
