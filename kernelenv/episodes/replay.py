"""Replay: re-run a notebook's trajectory through a KernelEnv and report which cells diverge.

Outputs are compared after normalising what legitimately varies between runs: ANSI codes,
memory addresses, execution counts (``In[7]``), timings (``%time``, ``%timeit``), UUIDs, the
kernel's temporary directories, and the bytes of binary images (compared by type only unless
``strict_images``).

Example:
    >>> trajectory = Trajectory.from_notebook("episode.ipynb")
    >>> async with KernelEnv() as env:
    ...     async for replayed in replay_trajectory(trajectory, env):
    ...         if replayed.divergence:
    ...             print(replayed.divergence.describe())
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from ..env import KernelEnv
from ..models import CodeAction, CodeObservation
from ..runtime.outputs import strip_ansi
from .export import METADATA_KEY

# (pattern, replacement) applied in order to every text compared.
NORMALISERS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"[^\s'\"]*?/kernelenv-[^/\s'\"]+/k\d+-[0-9a-f]{8}"), "<kernel-dir>"),
    (re.compile(r"\b0x[0-9a-fA-F]{4,}\b"), "0x<address>"),
    (re.compile(r"\b(In|Out)\s?\[\d*\]"), r"\1[N]"),
    (re.compile(r"(?m)^(CPU times|Wall time):.*$"), r"\1: <time>"),
    (re.compile(r"(?m)^.* per loop \(mean .*\)$"), "<timeit>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
]

# MIME types whose data is text, compared after normalising; other image data is binary.
_TEXT_IMAGE_TYPES = {"image/svg+xml"}


def normalise_text(text: str) -> str:
    """``text`` with what legitimately varies between runs replaced by placeholders."""
    text = strip_ansi(text)
    for pattern, replacement in NORMALISERS:
        text = pattern.sub(replacement, text)
    return text


def normalise_outputs(
    outputs: Iterable[dict[str, Any]], *, strict_images: bool = False
) -> list[str]:
    """Notebook outputs as comparable lines (execution counts and output metadata dropped).

    Args:
        outputs: nbformat v4 output dicts.
        strict_images: Compare binary image data byte for byte (default: by MIME type only,
            since image encoders legitimately differ between machines).
    """
    lines: list[str] = []
    for output in outputs:
        kind = output.get("output_type")
        if kind == "stream":
            text = _joined(output.get("text", ""))
            lines.append(f"[{output.get('name', 'stdout')}]")
            lines.extend(normalise_text(text).splitlines())
        elif kind in ("execute_result", "display_data"):
            lines.append(f"[{kind}]")
            for mime, value in sorted((output.get("data") or {}).items()):
                lines.extend(_mime_lines(mime, value, strict_images))
        elif kind == "error":
            lines.append(
                f"[error] {output.get('ename')}: {normalise_text(output.get('evalue', ''))}"
            )
            traceback = "\n".join(output.get("traceback") or [])
            lines.extend(normalise_text(traceback).splitlines())
        else:
            lines.append(f"[{kind}]")
    return lines


def _mime_lines(mime: str, value: Any, strict_images: bool) -> list[str]:
    if mime.startswith("image/") and mime not in _TEXT_IMAGE_TYPES and not strict_images:
        return [f"{mime}: <image>"]
    if not isinstance(value, str):
        if isinstance(value, list):  # multi-line strings as stored in a notebook file
            value = "".join(value)
        else:
            value = json.dumps(value, sort_keys=True, indent=1)
    return [f"{mime}:", *normalise_text(value).splitlines()]


def _joined(text: str | list[str]) -> str:
    return "".join(text) if isinstance(text, list) else text


@dataclass
class TrajectoryStep:
    """One recorded step: the code sent and the outputs it produced.

    Attributes:
        index: The step's number in the trajectory, counted from 1.
        code: The code of the step.
        outputs: The recorded nbformat v4 outputs.
        cell_id: The notebook cell's id, if it has one.
        status: The recorded step status (kernelenv notebooks only).
        timeout_s: The step's own budget, if the action had one.
    """

    index: int
    code: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    cell_id: str | None = None
    status: str | None = None
    timeout_s: float | None = None


@dataclass
class Trajectory:
    """The steps of an episode and how it was reset, as read from a notebook.

    Any notebook works: each code cell is a step. Notebooks exported by kernelenv also give
    the episode's seed, reset options (the task), and each step's recorded status.

    Attributes:
        steps: The code cells, in order.
        seed: The seed the episode was reset with.
        options: Reset options (e.g. ``task_id``).
        task_id: The episode's task, if any.
        episode_id: The recorded episode's id.
        grade: The recorded grade (a dict with ``score``), if the episode was graded.
        source: The notebook file, if read from one.
    """

    steps: list[TrajectoryStep]
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    episode_id: str | None = None
    grade: dict[str, Any] | None = None
    source: Path | None = None

    @classmethod
    def from_notebook(cls, notebook: str | os.PathLike[str] | NotebookNode) -> Trajectory:
        """Read a trajectory from a notebook file (or an already loaded notebook).

        Raises:
            nbformat.ValidationError: the notebook is not valid.
            OSError: the file cannot be read.
        """
        source = None
        if not isinstance(notebook, NotebookNode):
            source = Path(notebook)
            notebook = nbformat.read(source, as_version=4)
        nbformat.validate(notebook)
        meta = notebook.metadata.get(METADATA_KEY, {})
        steps = []
        for cell in notebook.cells:
            if cell.cell_type != "code":
                continue
            step_meta = cell.metadata.get(METADATA_KEY, {})
            steps.append(
                TrajectoryStep(
                    index=len(steps) + 1,
                    code=cell.source,
                    outputs=[dict(output) for output in cell.get("outputs", [])],
                    cell_id=cell.get("id"),
                    status=step_meta.get("status"),
                    timeout_s=step_meta.get("timeout_s"),
                )
            )
        options = dict(meta.get("options") or {})
        task_id = meta.get("task_id")
        if task_id and "task_id" not in options:
            options["task_id"] = task_id
        return cls(
            steps=steps,
            seed=meta.get("seed"),
            options=options,
            task_id=task_id,
            episode_id=meta.get("episode_id"),
            grade=meta.get("grade"),
            source=source,
        )


@dataclass
class Divergence:
    """How a replayed step differs from its recording.

    Attributes:
        step: The step's number, counted from 1.
        cell_id: The notebook cell's id, if any.
        reason: What differs, in a few words.
        expected: The recorded outputs, normalised.
        actual: The replayed outputs, normalised.
    """

    step: int
    cell_id: str | None
    reason: str
    expected: list[str]
    actual: list[str]

    def diff(self) -> str:
        """A unified diff of the normalised outputs."""
        return "\n".join(
            difflib.unified_diff(
                self.expected, self.actual, "recorded", "replayed", lineterm="", n=2
            )
        )

    def describe(self) -> str:
        """The divergence as a short human-readable paragraph."""
        where = f"step {self.step}" + (f" (cell {self.cell_id})" if self.cell_id else "")
        return f"{where}: {self.reason}\n{self.diff()}".rstrip()


@dataclass
class ReplayedStep:
    """A step re-run: the recording, the new observation, and the divergence if any.

    Attributes:
        step: The recorded step.
        observation: What the replay produced.
        divergence: How they differ, or None when they match.
    """

    step: TrajectoryStep
    observation: CodeObservation
    divergence: Divergence | None


@dataclass
class ReplayReport:
    """The outcome of replaying a whole trajectory.

    Attributes:
        trajectory: What was replayed.
        steps: Every replayed step, in order.
        grade: The re-grade (a :class:`~kernelenv.tasks.grading.Grade`), when asked for.
    """

    trajectory: Trajectory
    steps: list[ReplayedStep] = field(default_factory=list)
    grade: Any = None

    @property
    def divergences(self) -> list[Divergence]:
        """Every divergence, in step order."""
        return [s.divergence for s in self.steps if s.divergence is not None]

    @property
    def grade_changed(self) -> bool:
        """True when a re-grade's score differs from the recorded one."""
        recorded = (self.trajectory.grade or {}).get("score")
        if self.grade is None or recorded is None:
            return False
        return abs(self.grade.score - recorded) > 1e-9

    @property
    def ok(self) -> bool:
        """True when no step diverged and a re-grade (if any) kept the recorded score."""
        return not self.divergences and not self.grade_changed

    def summary(self) -> str:
        """One paragraph per divergence, the re-grade if any, and a total, as the CLI prints."""
        lines = [d.describe() for d in self.divergences]
        if self.grade is not None:
            recorded = (self.trajectory.grade or {}).get("score")
            was = f" (recorded: {recorded:.3f})" if recorded is not None else ""
            lines.append(
                f"re-grade: score {self.grade.score:.3f}{was}, "
                f"passed={self.grade.passed}: {self.grade.feedback}"
            )
        total = len(self.steps)
        if self.ok:
            lines.append(f"replayed {total} steps: no divergence")
        else:
            lines.append(f"replayed {total} steps: {len(self.divergences)} diverged")
        return "\n".join(lines)


def compare_step(
    step: TrajectoryStep, observation: CodeObservation, *, strict_images: bool = False
) -> Divergence | None:
    """The divergence between a recorded step and its replay, or None when they match."""
    expected = normalise_outputs(step.outputs, strict_images=strict_images)
    actual = normalise_outputs(observation.outputs, strict_images=strict_images)
    reason = None
    if step.status is not None and step.status != observation.status.value:
        reason = f"status {step.status} was {observation.status.value} on replay"
    elif expected != actual:
        reason = "outputs differ"
    if reason is None:
        return None
    return Divergence(step.index, step.cell_id, reason, expected, actual)


async def replay_trajectory(
    trajectory: Trajectory,
    env: KernelEnv,
    *,
    reset: bool = True,
    strict_images: bool = False,
) -> AsyncIterator[ReplayedStep]:
    """Re-run a trajectory step by step through ``env``, yielding each step as it completes.

    Steps run exactly as an agent's steps do (same kernel kind, sandbox, budgets).

    Args:
        trajectory: The steps to run.
        env: The env to run them in (its pool gives a fresh kernel).
        reset: Start a new episode with the trajectory's seed and options first.
        strict_images: See :func:`normalise_outputs`.
    """
    if reset:
        await env.reset(seed=trajectory.seed, **trajectory.options)
    for step in trajectory.steps:
        observation = await env.step(CodeAction(code=step.code, timeout_s=step.timeout_s))
        divergence = compare_step(step, observation, strict_images=strict_images)
        yield ReplayedStep(step, observation, divergence)


async def replay_notebook(
    notebook: str | os.PathLike[str] | NotebookNode | Trajectory,
    env: KernelEnv | None = None,
    *,
    strict_images: bool = False,
    grade: bool = False,
    progress: bool | None = False,
) -> ReplayReport:
    """Replay a whole notebook and collect the report (:func:`replay_trajectory` in one call).

    Args:
        notebook: A notebook path, a loaded notebook, or a :class:`Trajectory`.
        env: The env to replay in (default: a new one that starts exactly one kernel).
        strict_images: See :func:`normalise_outputs`.
        grade: Re-grade the replayed episode against its task (see ``KernelEnv.grade``).
        progress: Show a progress bar (``None``: only on a terminal).

    Raises:
        ResetNeeded: ``grade`` was asked for a notebook without a task.
    """
    from tqdm import tqdm  # the text bar: works in a terminal and in a notebook alike

    trajectory = (
        notebook if isinstance(notebook, Trajectory) else Trajectory.from_notebook(notebook)
    )
    own_env = env is None
    # pool_size=0: one kernel started on demand, no spare started in the background.
    env = env if env is not None else KernelEnv(pool_size=0)
    report = ReplayReport(trajectory)
    try:
        if own_env:
            await env.__aenter__()
        bar = tqdm(
            total=len(trajectory.steps),
            desc="replay",
            unit="cell",
            disable=None if progress is None else not progress,
        )
        with bar:
            async for replayed in replay_trajectory(trajectory, env, strict_images=strict_images):
                report.steps.append(replayed)
                bar.update()
        if grade:
            report.grade = await env.grade()
    finally:
        if own_env:
            await env.close()
    return report
