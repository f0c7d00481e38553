"""Grading at fork speed: each attempt and each grade in a throwaway fork of a warm kernel.

The protocol is :mod:`kernelenv.tasks.grading`'s, with forks in place of fresh kernels:

1. the *attempt kernel* is a warm kernel that never runs anything itself. For each attempt it
   forks a throwaway child (:mod:`kernelenv.runtime.throwaway`) that runs the seeding, the
   task's setup, the attempt's steps and the hidden ``collect`` cells, and sends back only the
   ``answer`` as JSON text (and the outputs of a step run as the attempt, for ``kernelenv
   eval``). The child, and whatever the attempt did to it, is gone before the next attempt.
2. the *grader kernel* is a second warm kernel, which no attempt's code ever reaches (attempt
   code runs only in children of the other one). For each grade it forks a child that runs
   the setup, a pristine copy of the service code, loads the answer from JSON and runs the
   hidden ``grader`` cells; the ``grade`` comes back as JSON.

Neither warm kernel runs task or attempt code itself, so one pair serves every task, and a
pair per worker serves an evaluation. A warm kernel that died (an attempt can signal its
parent) is replaced before the next use. Tasks with a host-side service (whose tools a fork
cannot reach) are graded the three-kernel way.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from ..errors import KernelCommunicationError
from ..models import CodeObservation, ErrorInfo, StepStatus
from ..runtime.kernel import Kernel
from ..runtime.outputs import DEFAULT_MAX_OUTPUT_BYTES
from ..runtime.pool import KernelPool
from ..runtime.throwaway import MAX_SPARES
from ..runtime.throwaway_host import (
    EVALUATE_MARGIN_S,
    ForkCell,
    ForkRun,
    cell_observation,
    run_batch_in_forks,
)
from .format import Task
from .grading import MAX_ANSWER_CHARS, Grade, grade_left

# Steps not replayed when grading (as tasks.run: they cannot have left state worth grading).
NOT_REPLAYED = (StepStatus.TIMEOUT, StepStatus.KERNEL_DIED, StepStatus.ABORTED)
# An interrupted cell's grace before its fork is killed.
GRACE_S = 1.0
_HIDDEN_STOPS = ("error", "timeout")


def forkable(task: Task) -> bool:
    """Whether attempts at ``task`` can be graded in forks (no host-side service to bridge)."""
    return not task.uses_review_actions and not task.service.strip()


class WarmGraders:
    """A warm attempt kernel and a warm grader kernel from ``pool``, for one user at a time.

    Example:
        >>> graders = WarmGraders(pool)
        >>> grade = await graders.grade_steps(task, [("def f(): ...", 10.0)])
        >>> await graders.aclose()
    """

    def __init__(self, pool: KernelPool) -> None:
        self.pool = pool
        self._attempt: Kernel | None = None
        self._grader: Kernel | None = None

    async def aclose(self) -> None:
        """Give both kernels back to the pool (they ran no attempt code: nothing to clean)."""
        for kernel in (self._attempt, self._grader):
            if kernel is not None:
                self.pool.release(kernel)
        self._attempt = self._grader = None

    async def _warm(self, which: str) -> Kernel:
        kernel = getattr(self, which)
        if kernel is not None and not await kernel.is_alive():
            self.pool.release(kernel)
            kernel = None
        if kernel is None:
            kernel = await self.pool.acquire()
            setattr(self, which, kernel)
        return kernel

    async def _fork(self, which: str, cells: list[ForkCell], read: str) -> ForkRun:
        (run,) = await self._fork_batch(which, [(cells, read)])
        return run

    async def _fork_batch(
        self, which: str, batch: list[tuple[list[ForkCell], str | None]]
    ) -> list[ForkRun]:
        if which == "_attempt" and len(batch) > MAX_SPARES:  # as many as it forks ahead
            head, rest = batch[:MAX_SPARES], batch[MAX_SPARES:]
            return [*await self._fork_batch(which, head), *await self._fork_batch(which, rest)]
        kernel = await self._warm(which)
        if which == "_attempt" and len(batch) > 1:
            # A child forked while its request held the batch found its batch-mates'
            # completions in its memory, and passed by running one: the attempt kernel forks
            # a child for each ahead, in a request of its own, and refuses to fork one in the
            # batch's (see throwaway.prepare_spares). Answers, which the grader kernel gets,
            # reach no attempt.
            await _prepare_spares(kernel, len(batch))
        runs = await run_batch_in_forks(
            kernel, batch, max_output_bytes=DEFAULT_MAX_OUTPUT_BYTES, grace_s=GRACE_S,
            work_dir=kernel.work_dir, grading=True, ahead_only=which == "_attempt",
            own_ipc=self.pool.sandbox.level == "bwrap",  # each kernel's own (see namespaces)
        )  # fmt: skip
        if any(run.kernel_lost for run in runs):  # an attempt killed its parent: replace it
            self.pool.release(kernel)
            setattr(self, which, None)
        elif len(batch) > 1 and any(run.again for run in runs):  # no child ahead: alone
            for index, run in enumerate(runs):
                if run.again:
                    (runs[index],) = await self._fork_batch(which, [batch[index]])
        return runs

    # -- attempts -------------------------------------------------------------------------

    async def grade_steps(
        self, task: Task, steps: Sequence[tuple[str, float]], *, prelude: str = ""
    ) -> Grade:
        """Grade code steps (``(code, timeout_s)`` pairs) as an attempt at ``task`` (as
        :func:`kernelenv.tasks.grading.grade_code_attempt`, in forks)."""
        answer, problem = await self.collect(task, steps, prelude=prelude)
        if problem is not None:
            return Grade.failed(task, problem)
        return await self.grade_answer(task, answer)

    async def collect(
        self, task: Task, steps: Sequence[tuple[str, float]], *, prelude: str = ""
    ) -> tuple[Any, str | None]:
        """Replay an attempt in a fork and take its ``answer`` out as JSON."""
        hidden = _hidden_cells(task, (prelude, "seeding"), (task.setup, "setup"))
        cells = [c for c, _ in hidden] + [ForkCell(code, t) for code, t in steps]
        cells.append(ForkCell(task.collect, task.limits.grade_timeout_s, stop_on=_HIDDEN_STOPS))
        run = await self._fork("_attempt", cells, "answer")
        return _answer_of(run, task, [name for _, name in hidden], len(steps))

    async def run_completion(
        self, task: Task, code: str, *, timeout_s: float
    ) -> tuple[CodeObservation, Grade]:
        """Run ``code`` as the one step of a fresh episode on ``task`` and grade it: the step's
        observation (as a fresh episode's) and its grade, as ``kernelenv eval`` reports them.

        The step runs once: its state is collected in the same fork, unless it timed out or
        crashed, which a replay would skip (then a second fork collects from the setup alone).
        """
        (result,) = await self.run_completions([(task, code, timeout_s)])
        return result

    async def run_completions(
        self, attempts: Sequence[tuple[Task, str, float]]
    ) -> list[tuple[CodeObservation, Grade]]:
        """:meth:`run_completion` for several ``(task, code, timeout_s)`` at once, each in a fork
        of its own: one request to the attempt kernel for all of them (each in a child it
        forked ahead, see :meth:`_fork_batch`), one for all their answers to the grader
        kernel. An attempt that kills the warm kernel costs the others nothing: they are
        graded again one by one."""
        plans = []
        for task, code, timeout_s in attempts:
            hidden = _hidden_cells(task, (task.setup, "setup"))
            step = ForkCell(code, timeout_s, capture=True, stop_on=("timeout",))
            collect = ForkCell(task.collect, task.limits.grade_timeout_s, stop_on=_HIDDEN_STOPS)
            plans.append((task, timeout_s, hidden, step, collect))
        runs = await self._fork_batch(
            "_attempt", [([c for c, _ in h] + [s, c], "answer") for _, _, h, s, c in plans]
        )
        if len(attempts) > 1 and any(run.kernel_lost for run in runs):
            return [(await self.run_completions([attempt]))[0] for attempt in attempts]
        observations: list[CodeObservation] = []
        answers: list[tuple[Any, str | None]] = []
        rerun: list[int] = []
        for index, ((task, timeout_s, hidden, _, _), run) in enumerate(zip(plans, runs)):
            names = [name for _, name in hidden]
            if not run.kernel_lost and any(
                i not in run.ends or run.ends[i].status != "ok" for i in range(len(hidden))
            ):
                # The setup itself failed: as a reset would have (a broken task).
                _, problem = _answer_of(run, task, names, 1)
                observations.append(
                    CodeObservation(status=StepStatus.ABORTED, stderr=problem or "")
                )
                answers.append((None, problem or "the setup failed"))
                continue
            observation = cell_observation(
                run, len(hidden), timeout_s=timeout_s, max_output_bytes=DEFAULT_MAX_OUTPUT_BYTES,
                episode_wording=True,
            )  # fmt: skip
            observations.append(observation)
            if observation.status in NOT_REPLAYED and not run.kernel_lost:
                rerun.append(index)
                answers.append((None, None))
            else:
                answers.append(_answer_of(run, task, names, 1))
        if rerun:  # collected from the setup alone: no attempt code runs in these forks
            reruns = await self._fork_batch(
                "_attempt",
                [([c for c, _ in plans[i][2]] + [plans[i][4]], "answer") for i in rerun],
            )
            for index, run in zip(rerun, reruns):
                task, _, hidden, _, _ = plans[index]
                answers[index] = _answer_of(run, task, [name for _, name in hidden], 0)
        to_grade = [i for i, (_, problem) in enumerate(answers) if problem is None]
        grades = await self.grade_answers([(plans[i][0], answers[i][0]) for i in to_grade])
        graded = dict(zip(to_grade, grades))
        return [
            (observation, graded.get(i) or Grade.failed(plans[i][0], answers[i][1] or ""))
            for i, observation in enumerate(observations)
        ]

    # -- grades ---------------------------------------------------------------------------

    async def grade_answer(self, task: Task, answer: Any) -> Grade:
        """Run the task's hidden grader on ``answer`` (JSON data) in a fork of the grader kernel,
        which never ran attempt code."""
        (grade,) = await self.grade_answers([(task, answer)])
        return grade

    async def grade_answers(self, answers: Sequence[tuple[Task, Any]]) -> list[Grade]:
        """:meth:`grade_answer` for several ``(task, answer)``, in one request (a fork each)."""
        if not answers:
            return []
        plans = []
        for task, answer in answers:
            payload = json.dumps(answer)
            load = f"import json as _json\nanswer = _json.loads({payload!r})\ndel _json"
            # The answer is a cell of its own: the grader's cell stays the same text for every
            # attempt at the task, compiled once by the warm kernel.
            plans.append(_hidden_cells(
                task, (task.setup, "setup"), (task.service, "service"), (load, "grader"),
                (task.grader, "grader"),
            ))  # fmt: skip
        runs = await self._fork_batch("_grader", [([c for c, _ in h], "grade") for h in plans])
        return [
            _grade_of(run, task, [name for _, name in hidden])
            for (task, _), hidden, run in zip(answers, plans, runs)
        ]


async def _prepare_spares(kernel: Kernel, count: int) -> None:
    """Have ``kernel`` fork ``count`` children ahead; a kernel that cannot is found out by the
    batch (its attempts come back to be sent alone, or it is lost and replaced)."""
    expression = (
        "__import__('kernelenv.runtime.throwaway', fromlist=['prepare_spares'])"
        f".prepare_spares({int(count)})"
    )
    with contextlib.suppress(KernelCommunicationError):
        await kernel.evaluate(expression, timeout_s=EVALUATE_MARGIN_S)


def _grade_of(run: ForkRun, task: Task, names: list[str]) -> Grade:
    """The grade a grader fork left (as the three-kernel path reads it)."""
    problem = _hidden_problem(run, names, task.limits.grade_timeout_s)
    if problem is not None:
        return Grade.failed(task, f"grading failed: {problem}")
    value, problem = _read(run, "grade")
    return grade_left(task, value, problem)


def _hidden_cells(task: Task, *parts: tuple[str, str]) -> list[tuple[ForkCell, str]]:
    """Task code run silently, each part stopping the fork when it fails (empty parts skipped)."""
    budget = task.limits.grade_timeout_s
    return [
        (ForkCell(code, budget, silent=True, stop_on=_HIDDEN_STOPS), name)
        for code, name in parts
        if code.strip()
    ]


def _detail(run: ForkRun, index: int, timeout_s: float) -> str:
    """What went wrong in cell ``index``, as the three-kernel path words it."""
    end = run.ends.get(index)
    if end is not None and end.status == "timeout":
        return f"TimeoutError: The step exceeded its {timeout_s:g} s budget and was interrupted."
    if end is not None and end.error is not None:
        return end.error.text
    return ErrorInfo(ename="KernelDied", evalue="the kernel died").text


def _hidden_problem(run: ForkRun, names: list[str], timeout_s: float) -> str | None:
    """Why the hidden cells ``0..len(names)-1`` did not all succeed, or None."""
    if run.refused is not None:
        return f"the kernel could not fork: {run.refused}"
    for index, name in enumerate(names):
        end = run.ends.get(index)
        if end is None or end.status != "ok":
            return f"the task's {name} code failed: {_detail(run, index, timeout_s)}"
    return None


def _answer_of(
    run: ForkRun, task: Task, hidden: list[str], steps: int
) -> tuple[Any, str | None]:
    """The attempt's answer from a fork that ran ``hidden`` cells, ``steps`` steps and collect."""
    if run.kernel_lost:
        return None, "the kernel died while replaying the attempt; nothing to grade"
    problem = _hidden_problem(run, hidden, task.limits.grade_timeout_s)
    if problem is not None:
        return None, problem
    first_step = len(hidden)
    for number in range(1, steps + 1):
        if first_step + number - 1 not in run.ends:  # the fork crashed, exited or was killed
            return None, f"the kernel died while replaying step {number}; nothing to grade"
    collect = first_step + steps
    end = run.ends.get(collect)
    if end is None:
        return None, "the kernel died while collecting the answer; nothing to grade"
    if end.status != "ok":
        detail = _detail(run, collect, task.limits.grade_timeout_s)
        return None, f"collecting the answer failed: {detail}"
    return _read(run, "answer")


def _read(run: ForkRun, name: str) -> tuple[Any, str | None]:
    """The value the fork read back, through JSON (never through stdout)."""
    if run.read_error is not None:
        detail = run.read_error.get("evalue", "no value")
        return None, f"`{name}` is missing or not JSON data ({detail})"
    if run.read is None:
        return None, "the kernel died"
    try:
        if len(run.read) > MAX_ANSWER_CHARS:
            raise ValueError("not a JSON text of acceptable size")
        return json.loads(run.read), None
    except (ValueError, RecursionError) as exc:
        return None, f"`{name}` could not be read as JSON ({exc})"
