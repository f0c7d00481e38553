"""The record of one episode: its id, seed, options, steps, state and task, as they happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..models import CodeState, StepRecord

if TYPE_CHECKING:
    from ..tasks.run import TaskRun


@dataclass
class Episode:
    """Everything kept about the current episode."""

    episode_id: str
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    state: CodeState = field(default_factory=CodeState)
    task: TaskRun | None = None  # set when reset(task_id=...) started a graded task
