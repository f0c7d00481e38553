"""Episodes as Jupyter notebooks: built from step records (pure), written atomically."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat
from nbformat import NotebookNode

from ..models import CodeAction, CodeObservation, ReviewAction
from ..runtime.outputs import WIDGET_STATE_KEY
from .notebook_state import notebook_view

if TYPE_CHECKING:
    from .episode import Episode

# nbformat 4.5 is the first minor version with cell ids, which JupyterLab expects.
NBFORMAT_MINOR = 5

# Packages whose versions explain how an episode's outputs came about.
VERSIONED_PACKAGES = ("kernelenv", "ipykernel", "jupyter_client", "nbformat", "ipython")

# Notebook and cell metadata key under which kernelenv keeps what Jupyter has no field for.
METADATA_KEY = "kernelenv"


@dataclass
class EpisodeInfo:
    """What a notebook says about its episode beyond the steps (notebook metadata).

    Attributes:
        episode_id: The episode's id.
        seed: The seed given to reset, if any.
        options: Reset options (e.g. ``task_id``), JSON-safe.
        task_id: The episode's task, if any.
        task_prompt: The prompt shown to the agent; becomes the first (markdown) cell.
        grade: The episode's grade (whatever the grader returned, JSON-safe), if graded.
        kernel_name: Name of the kernelspec the episode's kernels were started from.
        kernel_display_name: Its display name.
        python: Interpreter that ran the kernels.
        versions: Python and package versions of that interpreter (see :func:`kernel_versions`).
        extra: Anything else to keep in the notebook's ``kernelenv`` metadata.
    """

    episode_id: str
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    task_prompt: str | None = None
    grade: Any = None
    kernel_name: str = "kernelenv"
    kernel_display_name: str = "Python 3 (kernelenv)"
    python: str = sys.executable
    versions: dict[str, str | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TimedStep:
    """One step with wall-clock times (seconds since the epoch), the unit export works on.

    Attributes:
        action: What the agent sent.
        observation: What it got back.
        started_at: When the step started (``time.time()`` scale).
        ended_at: When the step ended.
    """

    action: CodeAction | ReviewAction
    observation: CodeObservation
    started_at: float
    ended_at: float


def wall_clock_offset() -> float:
    """Seconds to add to an event loop / monotonic time to get ``time.time()``.

    Step records keep the loop's monotonic clock (immune to clock changes while a step runs);
    notebooks want wall-clock timestamps.
    """
    return time.time() - time.monotonic()


def iso_timestamp(epoch_s: float) -> str:
    """An ISO 8601 UTC timestamp as nbclient writes them (``2024-01-01T12:00:00.123456Z``)."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def episode_notebook(info: EpisodeInfo, steps: Iterable[TimedStep]) -> NotebookNode:
    """Build the notebook of an episode: an optional task cell, then one code cell per step.

    Each code cell's outputs are the observation's outputs (nbformat v4 output dicts) as the
    notebook shows them at the end of the episode: updates by display id made by later steps
    are applied (see :mod:`kernelenv.episodes.notebook_state`), and the widget models the
    steps made are saved in ``metadata.widgets`` so that JupyterLab renders the widgets.
    A cell's ``metadata.execution`` has nbclient's timing keys and ``metadata.kernelenv`` the
    step's status, exit code, reward and the rest of the observation that a notebook has no
    field for.

    Args:
        info: The episode's id, seed, task, grade and kernel.
        steps: The steps, in order, with wall-clock times.

    Returns:
        A notebook that passes ``nbformat.validate`` (nbformat 4.5, cell ids set).
    """
    cells = []
    if info.task_prompt:
        cells.append(
            nbformat.v4.new_markdown_cell(
                source=info.task_prompt,
                id="task",
                metadata={METADATA_KEY: {"role": "task", "task_id": info.task_id}},
            )
        )
    # A live fork's notebook: its parent's steps come first, marked inherited.
    forked_from = info.extra.get("forked_from") or {}
    inherited = int(forked_from.get("steps", 0))
    steps = list(steps)
    final_outputs, widgets = notebook_view([step.observation for step in steps])
    for count, (step, outputs) in enumerate(zip(steps, final_outputs, strict=True), start=1):
        cell = step_cell(step, index=count, outputs=outputs)
        if count <= inherited:
            cell.metadata.setdefault(METADATA_KEY, {})["inherited"] = True
        cells.append(cell)
        if count == inherited:
            cells.append(
                nbformat.v4.new_markdown_cell(
                    source=f"*Forked from episode `{forked_from.get('episode_id')}` here: "
                    "the cells above are its steps, the cells below this episode's own.*",
                    id="fork",
                    metadata={METADATA_KEY: {"role": "fork", **forked_from}},
                )
            )
    metadata = notebook_metadata(info, len(steps))
    if widgets is not None:
        metadata["widgets"] = widgets
    notebook = nbformat.v4.new_notebook(cells=cells, metadata=metadata)
    notebook.nbformat_minor = NBFORMAT_MINOR
    return notebook


def step_cell(
    step: TimedStep, *, index: int, outputs: list[dict[str, Any]] | None = None
) -> NotebookNode:
    """The cell of one step (its id is ``step-<index>``, counted from 1).

    A code step is a code cell, with ``outputs`` (default: the observation's); a review
    submitted on a pr_review task is a markdown cell showing the review and the grader's
    feedback (a notebook has no cell kind for it).
    """
    if isinstance(step.action, ReviewAction):
        return review_cell(step, index=index)
    observation = step.observation
    started, ended = iso_timestamp(step.started_at), iso_timestamp(step.ended_at)
    step_metadata = {
        "step": index,
        "status": observation.status.value,
        "exit_code": observation.exit_code,
        "reward": observation.reward,
        "done": observation.done,
        "duration_s": observation.duration_s,
        "kernel_restarted": observation.kernel_restarted,
        "output_truncated": observation.output_truncated,
        "timeout_s": step.action.timeout_s,
        "request_id": step.action.request_id,
    }
    if observation.error is not None and not any(
        output["output_type"] == "error" for output in observation.outputs
    ):
        # Timeouts and dead kernels: the kernel never sent an error output, keep the cause.
        step_metadata["error"] = observation.error.model_dump(mode="json")
    # The code is the cell's source already, and the widget state is in the notebook's
    # metadata; the rest of the metadata is kept as is.
    extra = {
        k: v for k, v in observation.metadata.items() if k not in ("last_code", WIDGET_STATE_KEY)
    }
    if extra:
        step_metadata["metadata"] = _json_safe(extra)
    return nbformat.v4.new_code_cell(
        source=step.action.code,
        id=f"step-{index}",
        execution_count=observation.execution_count,
        outputs=[
            nbformat.from_dict(output)
            for output in (observation.outputs if outputs is None else outputs)
        ],
        metadata={
            "execution": {
                "iopub.status.busy": started,
                "iopub.execute_input": started,
                "shell.execute_reply": ended,
                "iopub.status.idle": ended,
            },
            METADATA_KEY: step_metadata,
        },
    )


def review_cell(step: TimedStep, *, index: int) -> NotebookNode:
    """The markdown cell of a review submission, its fields and grade in the metadata."""
    review = step.action.model_dump(mode="json", exclude_none=True)
    observation = step.observation
    rows = "\n".join(
        f"| {name} | {str(value).replace('|', '/')} |"
        for name, value in review.items() if name != "review"
    )
    source = (
        f"**Review submitted** (step {index}, reward {observation.reward})\n\n"
        f"> {review.get('review', '')}\n\n| field | value |\n|---|---|\n{rows}\n\n"
        f"**Feedback:** {observation.previous_feedback or observation.stdout.strip()}"
    )
    return nbformat.v4.new_markdown_cell(
        source=source,
        id=f"step-{index}",
        metadata={
            METADATA_KEY: {
                "role": "review",
                "step": index,
                "review": review,
                "status": observation.status.value,
                "exit_code": observation.exit_code,
                "reward": observation.reward,
                "done": observation.done,
                "feedback": observation.previous_feedback,
            }
        },
    )


def notebook_metadata(info: EpisodeInfo, step_count: int) -> dict[str, Any]:
    """Notebook metadata: ``kernelspec``, ``language_info`` and kernelenv's episode record."""
    return {
        "kernelspec": {
            "name": info.kernel_name,
            "display_name": info.kernel_display_name,
            "language": "python",
        },
        "language_info": {
            "name": "python",
            "version": info.versions.get("python") or "3",
            "mimetype": "text/x-python",
            "file_extension": ".py",
            "codemirror_mode": {"name": "ipython", "version": 3},
            "pygments_lexer": "ipython3",
            "nbconvert_exporter": "python",
        },
        METADATA_KEY: _json_safe(
            {
                "episode_id": info.episode_id,
                "seed": info.seed,
                "task_id": info.task_id,
                "options": info.options,
                "grade": info.grade,
                "steps": step_count,
                "versions": info.versions,
                **info.extra,
            }
        ),
    }


@functools.cache
def kernel_versions(python: str) -> dict[str, str | None]:
    """Python and package versions of the interpreter that runs the kernels (cached).

    Asks ``python`` itself when it is not this interpreter, since kernels may run elsewhere.
    """
    if python == sys.executable:
        return _versions_here()
    try:
        result = subprocess.run(
            [python, "-c", _VERSIONS_SCRIPT],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return json.loads(result.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {"python": "unknown", **{name: None for name in VERSIONED_PACKAGES}}


def _versions_here() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


_VERSIONS_SCRIPT = (
    "import json, platform\n"
    "from importlib import metadata as m\n"
    "def v(n):\n"
    "    try:\n"
    "        return m.version(n)\n"
    "    except m.PackageNotFoundError:\n"
    "        return None\n"
    f"print(json.dumps({{'python': platform.python_version(), "
    f"**{{n: v(n) for n in {VERSIONED_PACKAGES!r}}}}}))\n"
)


def _json_safe(value: Any) -> Any:
    """``value`` with anything JSON cannot hold turned into its string form."""
    return json.loads(json.dumps(value, default=str))


def episode_notebook_of(episode: Episode, *, kernel_name: str, python: str) -> NotebookNode:
    """The notebook of ``episode``, whose kernels came from ``kernel_name`` run by ``python``."""
    offset = wall_clock_offset()
    steps = [
        TimedStep(
            record.action, record.observation, record.started_at + offset, record.ended_at + offset
        )
        for record in episode.steps
    ]
    return episode_notebook(episode_info(episode, kernel_name=kernel_name, python=python), steps)


def episode_info(episode: Episode, *, kernel_name: str, python: str) -> EpisodeInfo:
    """What is known about ``episode``, as notebook metadata wants it."""
    state = episode.state
    task_id = state.task_id or episode.options.get("task_id")
    return EpisodeInfo(
        episode_id=episode.episode_id,
        seed=episode.seed,
        options=_json_safe(episode.options),
        task_id=task_id,
        task_prompt=_task_prompt(episode),
        grade=_json_safe(_grade(episode)),
        kernel_name=kernel_name,
        python=python,
        versions=kernel_versions(python),
        extra={
            **({"difficulty": state.difficulty} if state.difficulty else {}),
            **(
                {"forked_from": {"episode_id": episode.parent_episode_id,
                                 "steps": episode.inherited_steps}}
                if episode.parent_episode_id
                else {}
            ),
        },
    )


def write_notebook(notebook: NotebookNode, path: str | os.PathLike[str]) -> Path:
    """Write ``notebook`` to ``path`` atomically (a reader never sees half a file).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; a notebook is an ordinary file, made as open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            nbformat.write(notebook, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    # Linux shows it in /proc; elsewhere the only way to read it is to set it and set it back
    # (briefly process-wide, hence second choice).
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _task_prompt(episode: Episode) -> str | None:
    prompt = episode.task.task.prompt if episode.task is not None else None
    return prompt or None


def _grade(episode: Episode) -> Any:
    grade = episode.task.last_grade if episode.task is not None else None
    if grade is not None:
        return grade.model_dump(mode="json")
    if episode.state.last_score is not None:
        return {"score": episode.state.last_score}
    return None
