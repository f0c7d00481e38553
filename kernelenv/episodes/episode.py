"""The record of one episode: its id, seed, options, steps, state and task, as they happened."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..models import CodeState, StepRecord
from .notebook_state import DisplayIndex

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
    # Lineage of a live fork: the episode it was forked from, and how many of ``steps`` are
    # that parent's (inherited, run before the fork).
    parent_episode_id: str | None = None
    inherited_steps: int = 0
    displays: DisplayIndex = field(default_factory=DisplayIndex)  # display ids over the steps

    def forked(self, episode_id: str) -> Episode:
        """A copy of this episode as a fork's starting point: new id, the steps so far inherited."""
        return Episode(
            episode_id=episode_id,
            seed=self.seed,
            options=copy.deepcopy(self.options),
            steps=list(self.steps),
            state=self.state.model_copy(update={"episode_id": episode_id}),
            task=copy.deepcopy(self.task),
            parent_episode_id=self.episode_id,
            inherited_steps=len(self.steps),
            displays=copy.deepcopy(self.displays),
        )
