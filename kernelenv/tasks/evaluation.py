"""Grade files of model completions at scale: each in its own episode, graded by hidden cells.

``evaluate`` (and ``kernelenv eval``) takes completions (``task_id``, ``completion``; several per
task allowed), runs each as the one step of a fresh episode on the task, and grades it with
``env.grade()``: the attempt is replayed in a fresh kernel and judged by the task's hidden
grader in another, so a completion can neither see nor forge its grade. Hanging code is cut by
the task's step budget; code that kills its kernel (``os._exit``, a segfault) fails its row.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, Field
from tqdm import tqdm

from ..env import KernelEnv
from ..errors import DatasetFormatError, KernelEnvError
from ..models import CodeAction
from ..runtime.pool import KernelPool
from ..sandbox.config import SandboxConfig
from .fork_grading import WarmGraders, forkable
from .format import Task
from .importers import read_records
from .library import TaskLibrary, answer_key_dirs

MAX_COMPLETION_CHARS = 200_000
# The most completions a worker grades at once (their answers: one request to the grader).
BATCH_SIZE = 8


class Completion(BaseModel):
    """One line of a completions file."""

    task_id: str = Field(description="A task id of the library, or its dataset id (HumanEval/0).")
    completion: str = Field(
        max_length=MAX_COMPLETION_CHARS,
        description="Code: a whole solution, or (HumanEval's convention) the body that follows "
        "the task's starter code.",
    )
    index: int = Field(default=0, description="Its position in the file (0-based).")


class AttemptResult(BaseModel):
    """The grade of one completion (one row of the results file)."""

    index: int = Field(description="The completion's position in the completions file.")
    task_id: str = Field(description="The task, as the completions file named it.")
    library_task_id: str | None = Field(
        default=None,
        description="The library's id of that task: attempts naming one task two ways "
        "(HumanEval/3, humaneval_3) count as one task in the summary.",
    )
    passed: bool = Field(description="The score reached the task's pass score.")
    score: float = Field(description="The grade's score in [0, 1].")
    status: str = Field(
        description="How the completion's step ended: ok, error, timeout, kernel_died, aborted; "
        "infrastructure_error when kernelenv itself failed."
    )
    feedback: str = Field(description="The grader's feedback.")
    duration_s: float = Field(description="Wall-clock time of the episode, grading included.")
    notebook: str | None = Field(default=None, description="The attempt's notebook, if written.")


class EvalSummary(BaseModel):
    """What a whole evaluation came to."""

    attempts: int = Field(description="Completions graded.")
    tasks: int = Field(description="Distinct tasks.")
    passed: int = Field(description="Completions that passed.")
    pass_rate: float = Field(description="passed / attempts.")
    mean_score: float = Field(description="Mean score over the completions.")
    pass_at_k: dict[str, float] = Field(
        description="Unbiased pass@k (Chen et al. 2021), averaged over tasks, for each k no "
        "larger than the fewest completions of any task."
    )
    statuses: dict[str, int] = Field(description="Completions per step status.")
    duration_s: float = Field(description="Wall-clock time of the whole evaluation.")
    attempts_per_s: float = Field(description="Throughput.")


class EvalReport(BaseModel):
    """Every result and the summary."""

    results: list[AttemptResult] = Field(description="One per completion, in file order.")
    summary: EvalSummary = Field(description="Totals, pass rate, pass@k and throughput.")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from ``n`` samples of which ``c`` passed."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def read_completions(path: str | os.PathLike[str]) -> list[Completion]:
    """The completions of a JSON-lines file (``task_id`` and ``completion`` on every line).

    Raises:
        DatasetFormatError: a line is not JSON or lacks the fields (the message names it).
    """
    completions = []
    for number, record in read_records(path):
        try:
            completions.append(Completion(
                task_id=str(record["task_id"]), completion=record["completion"],
                index=len(completions),
            ))
        except (KeyError, ValueError) as exc:
            raise DatasetFormatError(
                f"{Path(path).name}:{number}: needs a 'task_id' and a 'completion' string ({exc})"
            ) from None
    return completions


def attempt_code(task: Task, completion: str) -> str:
    """The code a completion runs as: itself when it defines the task's function, else the
    task's starter code followed by it (HumanEval's convention for imported tasks)."""
    entry_point = task.context.get("entry_point")
    starter = task.context.get("starter_code") or ""
    if not entry_point or not starter:
        return completion
    try:
        tree = ast.parse(completion)
    except SyntaxError:
        return starter + completion
    defines = any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry_point
        for node in tree.body
    )
    return completion if defines else starter + completion


def summarize(results: Sequence[AttemptResult], duration_s: float) -> EvalSummary:
    """Totals, pass rate, pass@k and throughput of some results (pure)."""
    per_task: dict[str, list[bool]] = defaultdict(list)
    for result in results:
        per_task[result.library_task_id or result.task_id].append(result.passed)
    fewest = min((len(v) for v in per_task.values()), default=0)
    ks = [k for k in (1, 2, 5, 10, 20, 50, 100) if k <= fewest]
    passed = sum(r.passed for r in results)
    return EvalSummary(
        attempts=len(results),
        tasks=len(per_task),
        passed=passed,
        pass_rate=passed / len(results) if results else 0.0,
        mean_score=sum(r.score for r in results) / len(results) if results else 0.0,
        pass_at_k={
            f"pass@{k}": sum(pass_at_k(len(v), sum(v), k) for v in per_task.values())
            / len(per_task)
            for k in ks
        },
        statuses=dict(Counter(r.status for r in results)),
        duration_s=duration_s,
        attempts_per_s=len(results) / duration_s if duration_s > 0 else 0.0,
    )


async def grade_completion(
    pool: KernelPool,
    library: TaskLibrary,
    task: Task,
    completion: Completion,
    *,
    notebooks: Path | None = None,
) -> AttemptResult:
    """Grade one completion in a fresh episode on ``pool`` (infrastructure failures become a
    failed row, never an exception)."""
    started = time.monotonic()
    notebook_path = None
    try:
        async with KernelEnv(pool=pool, task_library=library) as env:
            await env.reset(task_id=task.id, episode_id=f"eval-{completion.index}")
            observation = await env.step(
                CodeAction(code=attempt_code(task, completion.completion)),
                timeout_s=task.limits.step_timeout_s,
            )
            grade = await env.grade()
            if notebooks is not None:
                notebook_path = notebooks / f"{completion.index:06d}-{task.id}.ipynb"
                await env.export_notebook(notebook_path)
        status, score, passed, feedback = (
            observation.status.value, grade.score, grade.passed, grade.feedback
        )
        if observation.error is not None and not passed:
            # The completion's own error first: a SyntaxError leaves no function to test, and
            # "No function named ... was defined" alone would hide why.
            error = observation.error
            feedback = f"the completion raised {error.ename}: {error.evalue}. {feedback}"
    except KernelEnvError as exc:
        status, score, passed = "infrastructure_error", 0.0, False
        feedback = f"{type(exc).__name__}: {exc}"
    return AttemptResult(
        index=completion.index,
        task_id=completion.task_id,
        library_task_id=task.id,
        passed=passed,
        score=score,
        status=status,
        feedback=feedback,
        duration_s=time.monotonic() - started,
        notebook=str(notebook_path) if notebook_path is not None else None,
    )


async def grade_completions_in_forks(
    graders: WarmGraders, tasks: Sequence[Task], completions: Sequence[Completion]
) -> list[AttemptResult]:
    """Grade completions in throwaway forks of ``graders``' warm kernels, together (see
    :meth:`WarmGraders.run_completions`): the rows :func:`grade_completion` gives.
    Each row's ``duration_s`` is its share of the batch's time."""
    started = time.monotonic()
    try:
        graded = await graders.run_completions([
            (task, attempt_code(task, completion.completion), task.limits.step_timeout_s)
            for task, completion in zip(tasks, completions)
        ])  # fmt: skip
    except KernelEnvError as exc:
        feedback = f"{type(exc).__name__}: {exc}"
        graded = [None] * len(completions)
    share = (time.monotonic() - started) / max(1, len(completions))
    results = []
    for task, completion, outcome in zip(tasks, completions, graded):
        if outcome is None:
            status, score, passed = "infrastructure_error", 0.0, False
        else:
            observation, grade = outcome
            status, score, passed, feedback = (
                observation.status.value, grade.score, grade.passed, grade.feedback
            )
            if observation.error is not None and not passed:
                error = observation.error
                feedback = f"the completion raised {error.ename}: {error.evalue}. {feedback}"
        results.append(AttemptResult(
            index=completion.index, task_id=completion.task_id, library_task_id=task.id,
            passed=passed, score=score, status=status, feedback=feedback, duration_s=share,
        ))  # fmt: skip
    return results


async def evaluate(
    completions: Iterable[Completion | dict[str, Any]] | str | os.PathLike[str],
    *,
    library: TaskLibrary | str | os.PathLike[str] | None = None,
    workers: int = 2,
    pool: KernelPool | None = None,
    sandbox: SandboxConfig | str | None = None,
    out: str | os.PathLike[str] | None = None,
    notebooks: str | os.PathLike[str] | None = None,
    progress: bool = False,
    forks: bool = True,
) -> EvalReport:
    """Grade completions, ``workers`` at a time.

    Each worker keeps two warm kernels and grades each completion in throwaway forks of them
    (see :mod:`kernelenv.tasks.fork_grading`); a task with a host-side service, or any
    completion when ``notebooks`` are asked for, runs as a fresh episode graded in fresh
    kernels (three kernels a completion, also what ``forks=False`` does for all). Both give the
    same rows.

    Example:
        >>> report = await evaluate("samples.jsonl", library="humaneval_tasks/", workers=4)
        >>> report.summary.pass_at_k
        {'pass@1': 0.61, 'pass@10': 0.83}

    Args:
        completions: A JSON-lines file, or :class:`Completion` objects (or dicts).
        library: The task library (a folder, or a :class:`TaskLibrary`; default: shipped).
        workers: Completions graded at once.
        pool: Kernels to use (default: a pool of its own, hiding the library from agent code).
        sandbox: Containment of the own pool's kernels.
        out: A JSON-lines file receiving each result as it is graded.
        notebooks: A folder receiving each attempt as a notebook.
        progress: Show a progress bar (on stderr).
        forks: Grade in throwaway forks of warm kernels (False: a fresh episode and two fresh
            grading kernels per completion, the slower path kept for comparison).

    Raises:
        DatasetFormatError: the completions file is malformed.
        UnknownTaskError: a completion names a task the library does not have.
    """
    started = time.monotonic()  # the summary's rate counts reading the tasks too
    if not isinstance(library, TaskLibrary):
        library = TaskLibrary(library)
    if isinstance(completions, str | os.PathLike):
        items = read_completions(completions)
    else:
        items = [
            c if isinstance(c, Completion) else Completion(**{"index": i, **c})
            for i, c in enumerate(completions)
        ]
    notebook_dir = Path(notebooks) if notebooks is not None else None
    if notebook_dir is not None:
        notebook_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers)
    results: list[AttemptResult | None] = [None] * len(items)
    tasks: list[Task] = []
    sink = open(out, "w", encoding="utf-8") if out is not None else None  # noqa: SIM115
    bar = tqdm(total=len(items), desc="grading", unit="attempt", disable=not progress)
    queue = iter(range(len(items)))
    # Completions a worker grades together (their answers in one request): fewer round trips,
    # and a batch is small enough that the workers stay busy to the end.
    batch_size = max(1, min(BATCH_SIZE, len(items) // (2 * workers)))

    def done(position: int, result: AttemptResult) -> None:
        results[position] = result
        if sink is not None:
            sink.write(result.model_dump_json() + "\n")
            sink.flush()
        bar.update(1)
        bar.set_postfix(passed=sum(bool(r and r.passed) for r in results))

    async def worker(shared: KernelPool) -> None:
        graders = WarmGraders(shared)
        try:
            # The queue is shared: each completion goes to one worker.
            while batch := list(itertools.islice(queue, batch_size)):
                forked = [p for p in batch if forks and notebook_dir is None
                          and forkable(tasks[p]) and isinstance(shared, KernelPool)]  # fmt: skip
                if forked:
                    rows = await grade_completions_in_forks(
                        graders, [tasks[p] for p in forked], [items[p] for p in forked]
                    )
                    for position, row in zip(forked, rows):
                        done(position, row)
                for position in batch:
                    if position not in forked:
                        done(position, await grade_completion(
                            shared, library, tasks[position], items[position],
                            notebooks=notebook_dir,
                        ))  # fmt: skip
        finally:
            with anyio.CancelScope(shield=True):
                await graders.aclose()

    async def run_all(shared: KernelPool) -> None:
        # Read (and check) the named tasks while the pool's kernels start: that is host CPU,
        # and a kernel's start is mostly its own process's.
        tasks.extend(await anyio.to_thread.run_sync(
            library.resolve, [item.task_id for item in items]
        ))  # fmt: skip
        async with anyio.create_task_group() as group:
            for _ in range(min(workers, len(items)) or 1):
                group.start_soon(worker, shared)

    try:
        if pool is not None:
            await run_all(pool)
        else:
            # An episode holds its kernel while two more replay and grade it.
            async with KernelPool(
                size=min(2 * workers, 16), sandbox=sandbox, hidden_paths=answer_key_dirs(library)
            ) as own_pool:
                await run_all(own_pool)
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    done = [r for r in results if r is not None]
    if out is not None:
        write_results(done, out)  # rows were streamed as they finished; now in file order
    return EvalReport(results=done, summary=summarize(done, time.monotonic() - started))


def summary_text(summary: EvalSummary) -> str:
    """The summary as a few lines for a terminal."""
    lines = [
        f"{summary.passed}/{summary.attempts} completions passed "
        f"({summary.pass_rate:.1%}) over {summary.tasks} tasks; mean score {summary.mean_score:.3f}",
    ]
    if summary.pass_at_k:
        lines.append("  ".join(f"{k} {v:.3f}" for k, v in summary.pass_at_k.items()))
    lines.append("statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items())))
    lines.append(f"{summary.duration_s:.1f} s, {summary.attempts_per_s:.2f} completions/s")
    return "\n".join(lines)


def write_results(results: Iterable[AttemptResult], path: str | os.PathLike[str]) -> None:
    """Write results as JSON lines."""
    with open(path, "w", encoding="utf-8") as sink:
        for result in results:
            sink.write(json.dumps(result.model_dump()) + "\n")
