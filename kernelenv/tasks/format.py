"""The task notebook format: read a ``.ipynb`` into a validated :class:`Task` (see tasks/README.md).

A task is a plain Jupyter notebook. Cell tags give each cell its role; notebook metadata under
``kernelenv.task`` gives the task's id, family, difficulty and limits. Run top to bottom in
Jupyter, a task notebook sets up its data, runs the reference solution, collects the answer and
prints its own grade.
"""

from __future__ import annotations

import ast
import os
from enum import Enum
from pathlib import Path
from typing import Any

import nbformat
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import TaskFormatError

# Cell roles, given as cell tags.
PROMPT = "prompt"  # markdown shown to the agent
SETUP = "setup"  # run in the episode's kernel at reset (and before grading)
SERVICE = "service"  # run on the host per episode; its __all__ reaches the kernel as tools
SOLUTION = "solution"  # reference solution; each cell is one step
WRONG = "wrong"  # a plausible wrong attempt (raw cells: Jupyter does not run them)
COLLECT = "collect"  # hidden: run after the attempt, leaves the attempt's ``answer``
GRADER = "grader"  # hidden: turns ``answer`` into ``grade`` in a pristine kernel
ROLES = (PROMPT, SETUP, SERVICE, SOLUTION, WRONG, COLLECT, GRADER)


class Family(str, Enum):
    """Task families: how an attempt is made and graded."""

    PR_REVIEW = "pr_review"
    FUNCTIONS = "functions"
    DATA_ANALYSIS = "data_analysis"
    MULTI_STEP = "multi_step"


class Difficulty(str, Enum):
    """How hard a task is."""

    EASY = "easy"
    MEDIUM = "medium"
    HARD = "hard"


class TaskLimits(BaseModel):
    """Budgets of an episode on the task."""

    model_config = ConfigDict(extra="forbid")

    step_timeout_s: float = Field(
        default=10.0, gt=0, description="Wall-clock budget of a step that asks for none."
    )
    max_step_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Largest budget a step may ask for (CodeAction.timeout_s, a request's "
        "timeout_s); larger ones are cut to it, in the episode and when grading replays it.",
    )
    max_steps: int = Field(default=30, gt=0, description="Steps after which the episode is done.")
    max_submissions: int = Field(
        default=3, gt=0, description="Review submissions accepted (pr_review family)."
    )
    grade_timeout_s: float = Field(
        default=30.0, gt=0, description="Budget of the hidden collect and grader cells."
    )

    @model_validator(mode="after")
    def _default_within_maximum(self) -> TaskLimits:
        if self.step_timeout_s > self.max_step_timeout_s:
            raise ValueError(
                f"step_timeout_s ({self.step_timeout_s:g}) exceeds max_step_timeout_s "
                f"({self.max_step_timeout_s:g})"
            )
        return self

    def step_budget(self, asked_s: float | None) -> float:
        """The budget a step gets: what it asked for (else the default), at most the maximum."""
        return min(asked_s or self.step_timeout_s, self.max_step_timeout_s)


class TaskMetadata(BaseModel):
    """The notebook metadata under ``kernelenv.task``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9_]+$", description="Unique id; also the file's stem.")
    version: int = Field(ge=1, description="Bumped whenever grading changes.")
    family: Family = Field(description="How attempts are made and graded.")
    difficulty: Difficulty = Field(description="easy, medium or hard.")
    title: str = Field(description="A short human title.")
    pass_score: float = Field(
        default=0.9, ge=0, le=1, description="Score at or above which a grade counts as passed."
    )
    limits: TaskLimits = Field(default_factory=TaskLimits, description="Episode budgets.")
    context: dict[str, Any] = Field(
        default_factory=dict,
        description="The family's own context shown to the agent (pr_review: code_snippet, "
        "pr_title, pr_description, changed_files; imported tasks: entry_point, starter_code).",
    )
    source_id: str | None = Field(
        default=None,
        description="The id of the dataset record the task was imported from (HumanEval/0); "
        "`kernelenv eval` accepts it for the task id.",
    )


class Task(TaskMetadata):
    """A task read from its notebook: metadata plus the source of each cell role."""

    path: Path | None = Field(default=None, description="The notebook it was read from.")
    prompt: str = Field(description="The markdown prompt shown to the agent.")
    setup: str = Field(default="", description="Code run in the episode's kernel at reset.")
    service: str = Field(
        default="",
        description="Code run on the host per episode (never in the agent's kernel); the "
        "functions and exception classes in its __all__ reach agent code as tools.",
    )
    solution: list[str] = Field(description="Reference solution, one string per step.")
    wrong: list[str] = Field(
        default_factory=list, description="A plausible wrong attempt, one string per step."
    )
    collect: str = Field(
        default="", description="Hidden code that leaves the attempt's ``answer`` (code families)."
    )
    grader: str = Field(description="Hidden code turning ``answer`` into a ``grade`` dict.")

    @property
    def uses_review_actions(self) -> bool:
        """Whether attempts are review submissions rather than code (the pr_review family)."""
        return self.family is Family.PR_REVIEW


def cell_role(cell: dict[str, Any]) -> str | None:
    """The role of a notebook cell: its tag among :data:`ROLES`, or ``metadata.kernelenv.role``."""
    metadata = cell.get("metadata", {})
    roles = [tag for tag in metadata.get("tags", []) if tag in ROLES]
    role = metadata.get("kernelenv", {}).get("role")
    if role is not None:
        roles.append(role)
    if len(set(roles)) > 1:
        raise TaskFormatError(f"a cell has more than one role: {sorted(set(roles))}")
    return roles[0] if roles else None


def load_task(path: str | os.PathLike[str]) -> Task:
    """Read and validate a task notebook.

    Raises:
        TaskFormatError: the file is not a valid notebook or not a valid task.
    """
    path = Path(path)
    try:
        notebook = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as exc:  # nbformat's read errors are ValueErrors
        raise TaskFormatError(f"{path.name}: not a readable notebook: {exc}") from exc
    try:
        task = task_from_notebook(notebook, path=path)
    except TaskFormatError as exc:
        raise TaskFormatError(f"{path.name}: {exc}") from exc
    if task.id != path.stem:
        raise TaskFormatError(f"{path.name}: the task id {task.id!r} must match the file name")
    return task


def task_from_notebook(notebook: dict[str, Any], path: Path | None = None) -> Task:
    """Build a :class:`Task` from a parsed notebook (nbformat v4 dict); pure.

    Raises:
        TaskFormatError: roles or metadata are missing or malformed.
    """
    meta = notebook.get("metadata", {}).get("kernelenv", {}).get("task")
    if meta is None:
        raise TaskFormatError("notebook metadata has no 'kernelenv.task' entry")
    cells: dict[str, list[str]] = {role: [] for role in ROLES}
    for number, cell in enumerate(notebook.get("cells", []), start=1):
        try:
            role = cell_role(cell)
        except TaskFormatError as exc:
            raise TaskFormatError(f"cell {number}: {exc}") from None
        if role is None:
            continue
        expected = {PROMPT: "markdown", WRONG: "raw"}.get(role, "code")
        if cell.get("cell_type") != expected:
            raise TaskFormatError(f"cell {number}: a {role!r} cell must be a {expected} cell")
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        if expected == "code" or role == WRONG:
            _check_python(source, f"cell {number} ({role})")
        cells[role].append(source)
    for role in (PROMPT, SOLUTION, GRADER):
        if not cells[role]:
            raise TaskFormatError(f"no cell tagged {role!r}")
    try:
        task = Task(
            **meta,
            path=path,
            prompt="\n\n".join(cells[PROMPT]),
            setup="\n\n".join(cells[SETUP]),
            service="\n\n".join(cells[SERVICE]),
            solution=cells[SOLUTION],
            wrong=cells[WRONG],
            collect="\n\n".join(cells[COLLECT]),
            grader="\n\n".join(cells[GRADER]),
        )
    except ValidationError as exc:
        raise TaskFormatError(f"invalid 'kernelenv.task' metadata: {exc}") from exc
    if task.service and task.uses_review_actions:
        raise TaskFormatError("pr_review tasks take reviews, not code: they have no service")
    if task.uses_review_actions:
        for source in [*task.solution, *task.wrong]:
            review_answer(source)  # raises when not a literal ``answer = {...}``
    elif not task.collect:
        raise TaskFormatError("code families need a cell tagged 'collect'")
    return task


def _check_python(source: str, where: str) -> None:
    """Raise a TaskFormatError naming the cell when its code is not Python (magics allowed)."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        ast.parse(source)
        return  # plain Python (most cells): IPython's tokenizing transform costs ~10 ms a cell
    except SyntaxError:
        pass
    try:
        ast.parse(TransformerManager().transform_cell(source))
    except SyntaxError as exc:
        raise TaskFormatError(f"{where}: not valid Python: {exc.msg} (line {exc.lineno})") from None


def review_answer(source: str) -> dict[str, Any]:
    """The review fields of a pr_review solution or wrong cell: a literal ``answer = {...}``.

    Raises:
        TaskFormatError: the cell is not a single assignment of a literal dict to ``answer``.
    """
    try:
        tree = ast.parse(source)
        (statement,) = tree.body
        assert isinstance(statement, ast.Assign)
        (target,) = statement.targets
        assert isinstance(target, ast.Name) and target.id == "answer"
        value = ast.literal_eval(statement.value)
        assert isinstance(value, dict)
    except (SyntaxError, ValueError, AssertionError) as exc:
        raise TaskFormatError(
            "a pr_review solution or wrong cell must be one literal `answer = {...}` "
            "assignment of review fields"
        ) from exc
    return value
