"""Task routes: ``GET /tasks`` lists the graded tasks, ``GET /grader`` grades a live episode."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ..errors import InvalidActionError
from ..tasks.grading import Grade
from ..tasks.library import TaskSummary
from .deps import Config, Sessions

router = APIRouter(tags=["tasks"])


class TaskListReply(BaseModel):
    """The body of ``GET /tasks``."""

    tasks: list[TaskSummary] = Field(description="Every task of the library, by id.")


class GraderReply(Grade):
    """The body of ``GET /grader``: the episode's grade."""

    episode_id: str = Field(description="The graded episode.")


@router.get("/tasks", response_model=TaskListReply, summary="The graded tasks")
async def list_tasks(config: Config) -> TaskListReply:
    """Every task of the library; start one with ``/reset`` and ``{"task_id": ...}``."""
    return TaskListReply(tasks=config.task_library().summaries())


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
