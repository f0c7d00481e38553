"""Task routes: ``GET /tasks`` lists the graded tasks, ``GET /grader`` grades a live episode."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ..errors import InvalidActionError
from ..grading import Grade
from ..task_format import TaskLimits
from ..task_library import default_library
from .deps import Sessions

router = APIRouter(tags=["tasks"])


class TaskSummary(BaseModel):
    """A task as listed by ``GET /tasks`` (never its solution or grader)."""

    id: str = Field(description="Pass it to reset as task_id.")
    version: int = Field(description="Bumped whenever grading changes.")
    family: str = Field(description="pr_review, functions, data_analysis or multi_step.")
    difficulty: str = Field(description="easy, medium or hard.")
    title: str = Field(description="A short human title.")
    action: str = Field(description="'review' (submit ReviewAction fields) or 'code'.")
    limits: TaskLimits = Field(description="Episode budgets.")


class TaskListReply(BaseModel):
    """The body of ``GET /tasks``."""

    tasks: list[TaskSummary] = Field(description="Every task of the library, by id.")


class GraderReply(Grade):
    """The body of ``GET /grader``: the episode's grade."""

    episode_id: str = Field(description="The graded episode.")


@router.get("/tasks", response_model=TaskListReply, summary="The graded tasks")
async def list_tasks() -> TaskListReply:
    """Every task of the library; start one with ``/reset`` and ``{"task_id": ...}``."""
    library = default_library()
    return TaskListReply(
        tasks=[
            TaskSummary(
                id=task.id,
                version=task.version,
                family=task.family.value,
                difficulty=task.difficulty.value,
                title=task.title,
                action="review" if task.uses_review_actions else "code",
                limits=task.limits,
            )
            for task in (library.get(task_id) for task_id in library.ids())
        ]
    )


@router.get("/grader", response_model=GraderReply, summary="Grade a task episode")
async def grade_episode(
    sessions: Sessions,
    task_id: Annotated[str, Query(description="The task the episode runs.")],
    episode_id: Annotated[str, Query(description="The episode, as returned by /reset.")],
) -> GraderReply:
    """Grade the episode in fresh kernels (never its live one); also sets its last_score."""
    session = sessions.get(episode_id)
    running = session.env.state.task_id
    if running != task_id:
        raise InvalidActionError(
            f"episode {episode_id!r} runs "
            + (f"task {running!r}" if running else "no task (reset it with a task_id)")
            + f", not {task_id!r}"
        )
    with sessions.using(session):
        grade = await session.env.grade()
    return GraderReply(**grade.model_dump(), episode_id=episode_id)
