"""Replay: re-run a notebook's trajectory through a KernelEnv and report which cells diverge.

Any notebook replays as nbclient would execute it: whitespace-only cells and cells tagged
``skip-execution`` are not run, ``raises-exception`` marks cells whose error is expected, the
working directory can be the notebook's own (``cwd="notebook"``), each cell has a budget after
which it is interrupted, and updates by display id rewrite the outputs of earlier cells.
Outputs are compared with :mod:`kernelenv.episodes.compare`, which tolerates what varies
between runs (addresses, timings, IPython versions' traceback headers, SVG attribute order,
widget ids, image bytes) unless told to be strict.

Example:
    >>> trajectory = Trajectory.from_notebook("episode.ipynb")
    >>> async with KernelEnv() as env:
    ...     async for replayed in replay_trajectory(trajectory, env, cwd="notebook"):
    ...         if replayed.divergence:
    ...             print(replayed.divergence.describe())
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import nbformat
from nbformat import NotebookNode

from ..env import KernelEnv
from ..errors import ReplayError
from ..models import CodeAction, CodeObservation, StepStatus
from .compare import (
    NORMALISERS,
    CompareOptions,
    normalise_outputs,
    normalise_text,
    output_lines,
)
from .export import METADATA_KEY
from .notebook_state import DISPLAY_UPDATES_KEY, apply_display_update

__all__ = [
    "NORMALISERS",
    "CompareOptions",
    "Divergence",
    "ReplayReport",
    "ReplayedStep",
    "StepPlan",
    "Trajectory",
    "TrajectoryStep",
    "compare_step",
    "normalise_outputs",
    "normalise_text",
    "replay_notebook",
    "replay_trajectory",
    "step_plan",
]

# Cell tags Jupyter tooling honours (nbclient's skip_cells_with_tag default, and the tag that
# lets one cell raise without stopping the notebook).
SKIP_TAG = "skip-execution"
RAISES_TAG = "raises-exception"

# What --copy-cwd copies at most: the notebook's directory goes into the kernel's own
# (writable, removed with the kernel) directory.
MAX_COPY_BYTES = 200 * 1024 * 1024
MAX_COPY_FILES = 10_000


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
        tags: The cell's tags (``skip-execution``, ``raises-exception``, ...).
        execution_count: The cell's recorded execution count.
    """

    index: int
    code: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    cell_id: str | None = None
    status: str | None = None
    timeout_s: float | None = None
    tags: tuple[str, ...] = ()
    execution_count: int | None = None


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
            tags = cell.metadata.get("tags") or []
            steps.append(
                TrajectoryStep(
                    index=len(steps) + 1,
                    code=cell.source,
                    outputs=[dict(output) for output in cell.get("outputs", [])],
                    cell_id=cell.get("id"),
                    status=step_meta.get("status"),
                    timeout_s=step_meta.get("timeout_s"),
                    tags=tuple(tag for tag in tags if isinstance(tag, str)),
                    execution_count=cell.get("execution_count"),
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
        expected: The recorded outputs, normalised (lines of JSON).
        actual: The replayed outputs, normalised (lines of JSON).
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
    """A step re-run (or skipped): the recording, the new observation, the divergence if any.

    Attributes:
        step: The recorded step.
        observation: What the replay produced (None when the step was not run).
        divergence: How the step differs from its recording, or None when it matches. Revised
            when a later step updates this step's outputs by display id.
        skipped: Why the step was not run (``"skip-execution tag"``, ``"empty cell"``).
        outputs: The step's outputs as the replayed notebook shows them now: the
            observation's, with the display updates of later steps applied.
    """

    step: TrajectoryStep
    observation: CodeObservation | None
    divergence: Divergence | None
    skipped: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class StepPlan:
    """What replay does with one cell (nbclient's checks, in nbclient's order).

    Attributes:
        run: Send the cell's code to the kernel.
        skipped: Why not, when not.
        errors_allowed: An error in this cell is only an output (compared like the others).
    """

    run: bool
    skipped: str | None = None
    errors_allowed: bool = True


def step_plan(
    step: TrajectoryStep, *, skip_tag: str | None = SKIP_TAG, allow_errors: bool = True
) -> StepPlan:
    """Decide whether a cell runs and whether its errors are allowed.

    Whitespace-only cells are not run (nbclient does not run them either, which keeps
    execution counts aligned); cells tagged ``skip_tag`` are not run; ``raises-exception``
    allows an error in a cell even when ``allow_errors`` is off.
    """
    if not step.code.strip():
        return StepPlan(run=False, skipped="empty cell")
    if skip_tag and skip_tag in step.tags:
        return StepPlan(run=False, skipped=f"{skip_tag} tag")
    return StepPlan(run=True, errors_allowed=allow_errors or RAISES_TAG in step.tags)


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
        skipped = sum(1 for step in self.steps if step.skipped)
        counted = f"replayed {total} steps" + (f" ({skipped} not run)" if skipped else "")
        if self.ok:
            lines.append(f"{counted}: no divergence")
        else:
            lines.append(f"{counted}: {len(self.divergences)} diverged")
        return "\n".join(lines)


def compare_step(
    step: TrajectoryStep,
    observation: CodeObservation,
    *,
    options: CompareOptions | None = None,
    strict_images: bool = False,
    outputs: list[dict[str, Any]] | None = None,
    errors_allowed: bool = True,
) -> Divergence | None:
    """The divergence between a recorded step and its replay, or None when they match.

    Args:
        step: The recorded step.
        observation: Its replay.
        options: The comparison's tolerances (default: all of them).
        strict_images: Shorthand for ``options.strict_images``.
        outputs: The replayed outputs to compare (default: the observation's); replay passes
            them with later steps' display updates applied.
        errors_allowed: Without it, an error in the replay is a divergence of its own.
    """
    options = _with_strict_images(options, strict_images)
    expected = normalise_outputs(step.outputs, options)
    actual = normalise_outputs(observation.outputs if outputs is None else outputs, options)
    reason = None
    if step.status is not None and step.status != observation.status.value:
        reason = f"status {step.status} was {observation.status.value} on replay"
    elif not errors_allowed and observation.status is not StepStatus.OK:
        ename = observation.error.ename if observation.error else observation.status.value
        reason = f"raised {ename} in a cell without the {RAISES_TAG} tag"
    elif expected != actual:
        reason = "outputs differ"
    elif options.compare_execution_count and step.execution_count != observation.execution_count:
        reason = f"execution count {observation.execution_count} was {step.execution_count}"
    if reason is None:
        return None
    return Divergence(step.index, step.cell_id, reason, output_lines(expected), output_lines(actual))


def _with_strict_images(options: CompareOptions | None, strict_images: bool) -> CompareOptions:
    options = options or CompareOptions()
    return dataclasses.replace(options, strict_images=True) if strict_images else options


StepTimeout = float | Callable[[TrajectoryStep], float | None] | None


async def replay_trajectory(
    trajectory: Trajectory,
    env: KernelEnv,
    *,
    reset: bool = True,
    options: CompareOptions | None = None,
    strict_images: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    copy_cwd: bool = False,
    skip_tag: str | None = SKIP_TAG,
    allow_errors: bool = True,
    timeout_s: StepTimeout = None,
) -> AsyncIterator[ReplayedStep]:
    """Re-run a trajectory step by step through ``env``, yielding each step as it completes.

    Steps run exactly as an agent's steps do (same kernel kind, sandbox, budgets; a step over
    its budget is interrupted). When a step updates earlier steps' outputs by display id, the
    :class:`ReplayedStep` objects already yielded get their ``outputs`` and ``divergence``
    revised, so a report ends up judging the notebook as a whole, as it was recorded.

    Args:
        trajectory: The steps to run.
        env: The env to run them in (its pool gives a fresh kernel).
        reset: Start a new episode with the trajectory's seed and options first.
        options: The comparison's tolerances (see :class:`CompareOptions`).
        strict_images: Shorthand for ``options.strict_images``.
        cwd: The kernel's working directory: ``"work"`` or None (the kernel's own empty
            directory), ``"notebook"`` (the notebook file's directory, as nbclient and
            papermill run), or a directory. Under the bwrap sandbox it is read-only, and
            invisible under ``/tmp`` (kernels get a private one). A kernel replaced after a
            step it could not interrupt starts in its own directory again (its variables
            are lost too).
        copy_cwd: Copy that directory into the kernel's own directory and work in the copy
            (writable, removed with the kernel), for notebooks that write beside themselves.
        skip_tag: Cells with this tag are not run (None: every cell runs).
        allow_errors: Errors are outputs like any other; without it, an error in a cell that
            has no ``raises-exception`` tag is a divergence (nbclient's ``allow_errors``).
        timeout_s: The budget of a step without its own recorded budget: seconds, or a
            function of the step (nbclient's ``timeout_func``); None: the env's default.

    Raises:
        ReplayError: the working directory cannot be used.
    """
    options = _with_strict_images(options, strict_images)
    directory = working_directory(trajectory, cwd)
    if reset:
        await env.reset(seed=trajectory.seed, **trajectory.options)
    if directory is not None:
        await enter_directory(env, directory, copy=copy_cwd)
    # env step number -> the replayed step it ran, for display updates of earlier steps.
    by_env_step: dict[int, tuple[ReplayedStep, StepPlan]] = {}
    for step in trajectory.steps:
        plan = step_plan(step, skip_tag=skip_tag, allow_errors=allow_errors)
        if not plan.run:
            yield ReplayedStep(step, None, None, skipped=plan.skipped)
            continue
        budget = step.timeout_s or (timeout_s(step) if callable(timeout_s) else timeout_s)
        observation = await env.step(CodeAction(code=step.code, timeout_s=budget))
        replayed = ReplayedStep(step, observation, None, outputs=list(observation.outputs))
        by_env_step[env.state.step_count] = (replayed, plan)
        for update in observation.metadata.get(DISPLAY_UPDATES_KEY) or ():
            earlier, earlier_plan = by_env_step.get(update.get("step"), (None, None))
            if earlier is None or earlier is replayed or earlier_plan is None:
                continue  # a step from before this replay, or a damaged update
            if apply_display_update(earlier.outputs, update):
                earlier.divergence = _compare(earlier, earlier_plan, options)
        replayed.divergence = _compare(replayed, plan, options)
        yield replayed


def _compare(
    replayed: ReplayedStep, plan: StepPlan, options: CompareOptions
) -> Divergence | None:
    assert replayed.observation is not None
    return compare_step(
        replayed.step,
        replayed.observation,
        options=options,
        outputs=replayed.outputs,
        errors_allowed=plan.errors_allowed,
    )


def working_directory(
    trajectory: Trajectory, cwd: str | os.PathLike[str] | None
) -> Path | None:
    """The directory a replay runs in, from the ``cwd`` setting (None: the kernel's own).

    Raises:
        ReplayError: ``"notebook"`` for a trajectory not read from a file, or not a directory.
    """
    if cwd is None or cwd == "work":
        return None
    if cwd == "notebook":
        if trajectory.source is None:
            raise ReplayError(
                "cwd='notebook' needs a notebook read from a file; pass a directory instead"
            )
        directory = trajectory.source.resolve().parent
    else:
        directory = Path(cwd).resolve()
    if not directory.is_dir():
        raise ReplayError(f"cannot replay in {directory}: not a directory")
    return directory


async def enter_directory(env: KernelEnv, directory: Path, *, copy: bool = False) -> None:
    """Make ``directory`` (or a copy of it) the working directory of ``env``'s kernel.

    Raises:
        ReplayError: the directory is too big to copy, or the kernel cannot enter it (the
            sandbox hides it).
    """
    kernel = env.kernel
    if kernel is None:
        raise ReplayError("the env has no kernel; reset it first")
    if copy:
        work_dir = getattr(kernel, "work_dir", None)
        if work_dir is None:
            raise ReplayError("copy_cwd needs a local kernel (its directory is on this machine)")
        target = Path(work_dir) / (directory.name or "notebook")
        directory = await anyio.to_thread.run_sync(copy_directory, directory, target)
    outcome = await kernel.execute(chdir_code(str(directory)), timeout_s=30, silent=True)
    if outcome.observation.status is not StepStatus.OK:
        error = outcome.observation.error
        raise ReplayError(
            f"the kernel cannot work in {directory}: {error.ename if error else ''} "
            f"{error.evalue if error else outcome.observation.status.value}; the sandbox hides "
            "the pool's and the task library's directories (copy_cwd copies it instead)"
        )


def copy_directory(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` (symbolic links kept as links), within the size caps.

    Raises:
        ReplayError: more than ``MAX_COPY_FILES`` files or ``MAX_COPY_BYTES`` bytes.
    """
    files = size = 0
    for root, dirs, names in os.walk(source):
        files += len(names) + len(dirs)
        size += sum((Path(root) / name).lstat().st_size for name in names)
        if files > MAX_COPY_FILES or size > MAX_COPY_BYTES:
            raise ReplayError(
                f"{source} is too big to copy for a replay (more than {MAX_COPY_FILES} files "
                f"or {MAX_COPY_BYTES // 2**20} MiB); replay in it read-only instead"
            )
    try:
        shutil.copytree(source, target, symlinks=True)
    except OSError as exc:  # shutil.Error included: unreadable files, a full disk
        shutil.rmtree(target, ignore_errors=True)
        raise ReplayError(f"cannot copy {source} for a replay: {exc}") from exc
    return target


def chdir_code(path: str) -> str:
    """Silent code that makes ``path`` the kernel's working directory."""
    return f"import os as _kernelenv_os\n_kernelenv_os.chdir({path!r})\ndel _kernelenv_os\n"


async def replay_notebook(
    notebook: str | os.PathLike[str] | NotebookNode | Trajectory,
    env: KernelEnv | None = None,
    *,
    options: CompareOptions | None = None,
    strict_images: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    copy_cwd: bool = False,
    skip_tag: str | None = SKIP_TAG,
    allow_errors: bool = True,
    timeout_s: StepTimeout = None,
    grade: bool = False,
    progress: bool | None = False,
) -> ReplayReport:
    """Replay a whole notebook and collect the report (:func:`replay_trajectory` in one call).

    ``options``, ``strict_images``, ``cwd``, ``copy_cwd``, ``skip_tag``, ``allow_errors`` and
    ``timeout_s`` are those of :func:`replay_trajectory`.

    Args:
        notebook: A notebook path, a loaded notebook, or a :class:`Trajectory`.
        env: The env to replay in (default: a new one whose own :class:`KernelPool` starts
            exactly one kernel, on demand).
        grade: Re-grade the replayed episode against its task (see ``KernelEnv.grade``).
        progress: Show a progress bar (``None``: only on a terminal).

    Raises:
        ResetNeeded: ``grade`` was asked for a notebook without a task.
        ReplayError: the working directory cannot be used.
    """
    from tqdm import tqdm  # the text bar: works in a terminal and in a notebook alike

    trajectory = (
        notebook if isinstance(notebook, Trajectory) else Trajectory.from_notebook(notebook)
    )
    working_directory(trajectory, cwd)  # a bad setting fails before a kernel starts
    own_env = env is None
    # pool_size=0: the env's own KernelPool starts one kernel on demand, no spare.
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
            steps = replay_trajectory(
                trajectory,
                env,
                options=options,
                strict_images=strict_images,
                cwd=cwd,
                copy_cwd=copy_cwd,
                skip_tag=skip_tag,
                allow_errors=allow_errors,
                timeout_s=timeout_s,
            )
            async for replayed in steps:
                report.steps.append(replayed)
                bar.update()
        if grade:
            report.grade = await env.grade()
    finally:
        if own_env:
            await env.close()
    return report
