"""The record of one episode: its id, seed, options, steps, state and task, as they happened."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InvalidEpisodeIdError
from ..models import CodeState, StepRecord
from ..runtime.sizes import held_bytes
from .notebook_state import DisplayIndex

if TYPE_CHECKING:
    from ..tasks.run import TaskRun

# Episode ids come from clients and name files (journal) and downloads (export): letters and
# digits of any script, '_', '-' and '.', not starting with '.', at most 128 characters.
EPISODE_ID_MAX_LENGTH = 128
_EPISODE_ID = re.compile(r"(?!\.)[\w.-]+")

# What an episode may keep in memory (its steps' code and observations): every step is kept
# for export, grading, forks and retries, so without a cap an agent that prints a megabyte a
# step grows its server without end. Past the cap, steps are refused until the next reset.
DEFAULT_MAX_HISTORY_BYTES = 256 * 1024 * 1024


def check_episode_id(episode_id: str) -> str:
    """Return ``episode_id`` if it is a valid episode id, else raise.

    Valid ids have 1 to 128 characters: letters and digits (any script), ``_``, ``-`` and
    ``.``, not starting with ``.``.

    Raises:
        InvalidEpisodeIdError: the id is not a string, is empty or too long, or has other
            characters.
    """
    if not isinstance(episode_id, str):
        raise InvalidEpisodeIdError(
            f"an episode id must be a string, not {type(episode_id).__name__}"
        )
    if not 1 <= len(episode_id) <= EPISODE_ID_MAX_LENGTH:
        raise InvalidEpisodeIdError(
            f"an episode id has 1 to {EPISODE_ID_MAX_LENGTH} characters, this one has "
            f"{len(episode_id)}; omit it to get a fresh one"
        )
    if not _EPISODE_ID.fullmatch(episode_id):
        raise InvalidEpisodeIdError(
            f"episode id {episode_id!r} has characters ids may not have: use letters, digits, "
            "'_', '-' and '.' (not first); omit it to get a fresh one"
        )
    return episode_id


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
    kept_bytes: int = 0  # what ``steps`` hold, about (see :func:`step_bytes`)

    def keep(self, record: StepRecord, copies: int = 1) -> None:
        """Add a finished step (kept ``copies`` times: a retry's answer is another)."""
        self.steps.append(record)
        self.kept_bytes += copies * step_bytes(record)

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
            kept_bytes=self.kept_bytes,
        )


def step_bytes(record: StepRecord) -> int:
    """About how many bytes a step holds: its code, texts, outputs and metadata (tool calls,
    late output, display updates) as this process holds them (see :func:`held_bytes`)."""
    observation = record.observation
    error = observation.error
    return held_bytes([
        record.action.model_dump(mode="python"), observation.stdout, observation.stderr,
        observation.return_value, observation.outputs, observation.metadata,
        error.traceback if error is not None else None, error.evalue if error is not None else None,
    ])  # fmt: skip
