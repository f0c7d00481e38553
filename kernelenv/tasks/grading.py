"""Grades and the grading protocol: hidden grader cells run in fresh kernels, never the agent's.

Grading a code attempt takes two fresh kernels from a pool:

1. the *attempt kernel* runs the task's setup (with a fresh host-side instance of the task's
   service, if it has one, offered as tools), replays the agent's steps, then the hidden
   ``collect`` cells, which leave the attempt's ``answer``; only that answer, as JSON, leaves
   the kernel. No expected value ever enters this kernel, so code the agent planted there
   (patched builtins, redefined helpers, stack inspection) has nothing to steal or forge.
2. the *grader kernel*, which never ran agent code, runs the setup (and a pristine copy of the
   service, for its data), receives the answer as JSON and runs the hidden ``grader`` cells,
   which leave a ``grade`` dict read back by the host.

A dead attempt kernel, a missing answer or an answer that is not JSON scores 0. Files the agent
writes (a fake ``grade.json``) and text it prints are never read.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Sequence
from typing import Any

import anyio.to_thread
from pydantic import BaseModel, Field, ValidationError

from ..errors import ToolSetupError
from ..models import StepStatus
from ..runtime.kernel import Kernel
from ..runtime.pool import KernelPool
from ..tools.bridge import ToolBridge
from ..tools.registry import ToolRegistry
from .format import Task
from .service import TaskService

log = logging.getLogger(__name__)

# Largest answer accepted from an attempt, as JSON text.
MAX_ANSWER_CHARS = 1_000_000
_ANSWER_OUTPUT_BYTES = 4 * MAX_ANSWER_CHARS


class Grade(BaseModel):
    """The grade of an attempt at a task."""

    task_id: str = Field(description="The graded task.")
    score: float = Field(ge=0.0, le=1.0, description="Overall score in [0, 1].")
    passed: bool = Field(description="True when the score reaches the task's pass score.")
    feedback: str = Field(description="What was right and what was wrong, for the agent.")
    components: dict[str, float] = Field(
        default_factory=dict, description="Named partial-credit components, each in [0, 1]."
    )

    @classmethod
    def failed(cls, task: Task, feedback: str) -> Grade:
        """A zero grade with an explanation (no answer, dead kernel, broken grader)."""
        return cls(task_id=task.id, score=0.0, passed=False, feedback=feedback)


class _GradeDict(BaseModel):
    """What a task's grader cells must leave in ``grade``."""

    score: float = Field(ge=0.0, le=1.0, description="Overall score in [0, 1].")
    feedback: str = Field(default="", description="Explanation for the agent.")
    components: dict[str, float] = Field(default_factory=dict, description="Partial credit.")


async def grade_code_attempt(
    pool: KernelPool,
    task: Task,
    steps: Sequence[tuple[str, float]],
    *,
    prelude: str = "",
) -> Grade:
    """Grade code steps (``(code, timeout_s)`` pairs) as an attempt at ``task``.

    Args:
        pool: Where the two fresh grading kernels come from.
        task: A task of a code family (with ``collect`` cells).
        steps: The attempt's cells in order, each with its time budget.
        prelude: Code run silently before the setup (the episode's seeding).
    """
    answer, problem = await collect_answer(pool, task, steps, prelude=prelude)
    if problem is not None:
        return Grade.failed(task, problem)
    return await grade_answer(pool, task, answer)


async def grade_answer(pool: KernelPool, task: Task, answer: Any) -> Grade:
    """Run the task's hidden grader on ``answer`` (JSON data) in a pristine kernel."""
    (grade,) = await grade_answers(pool, task, [answer])
    return grade


async def grade_answers(pool: KernelPool, task: Task, answers: Sequence[Any]) -> list[Grade]:
    """Grade several answers to one task in one pristine kernel (setup re-run before each).

    The kernel never runs attempt code, only the task's own cells, so answers cannot
    influence each other's grades (validation uses this to save kernel starts).
    """
    kernel = await pool.acquire()
    try:
        return [await _grade_in(kernel, task, answer) for answer in answers]
    finally:
        pool.release(kernel)


async def _grade_in(kernel: Kernel, task: Task, answer: Any) -> Grade:
    payload = json.dumps(answer)
    budget = task.limits.grade_timeout_s
    problem = await _run_hidden(kernel, task.setup, budget, "setup")
    if problem is None:
        # A pristine copy of the service, for its data: this kernel never runs agent code.
        problem = await _run_hidden(kernel, task.service, budget, "service")
    if problem is None:
        load = f"import json as _json\nanswer = _json.loads({payload!r})\ndel _json"
        problem = await _run_hidden(kernel, load + "\n" + task.grader, budget, "grader")
    if problem is not None:
        log.error("task %s: %s", task.id, problem)
        return Grade.failed(task, f"grading failed: {problem}")
    value, problem = await _read_json(kernel, "grade", budget)
    return grade_left(task, value, problem)


def grade_left(task: Task, value: Any, problem: str | None) -> Grade:
    """The grade a grader cell left as ``grade`` (read as JSON; ``problem`` if it could not be)."""
    if problem is not None:
        return Grade.failed(task, f"the grader left no grade: {problem}")
    try:
        result = _GradeDict.model_validate(value)
    except ValidationError as exc:
        return Grade.failed(task, f"the grader left an invalid grade: {exc}")
    return Grade(
        task_id=task.id,
        score=result.score,
        passed=result.score >= task.pass_score,
        feedback=result.feedback,
        components=result.components,
    )


async def collect_answer(
    pool: KernelPool, task: Task, steps: Sequence[tuple[str, float]], *, prelude: str = ""
) -> tuple[Any, str | None]:
    """Replay an attempt in a fresh kernel and take its ``answer`` out as JSON.

    Returns:
        ``(answer, None)``, or ``(None, what went wrong)`` when there is nothing to grade.
    """
    kernel = await pool.acquire()
    try:
        return await _replay_and_collect(kernel, task, steps, prelude)
    except ToolSetupError:
        raise  # the grading machinery's fault, not the attempt's
    except Exception as exc:  # noqa: BLE001 - agent code can break the kernel's messages
        log.info("task %s: attempt kernel broke the protocol: %r", task.id, exc)
        return None, f"the kernel broke its protocol ({type(exc).__name__}); nothing to grade"
    finally:
        pool.release(kernel)


async def _replay_and_collect(
    kernel: Kernel, task: Task, steps: Sequence[tuple[str, float]], prelude: str
) -> tuple[Any, str | None]:
    """Run setup, the attempt's steps and the collect cells; then read ``answer``."""
    budget = task.limits.grade_timeout_s
    for code, name in ((prelude, "seeding"), (task.setup, "setup")):
        problem = await _run_hidden(kernel, code, budget, name)
        if problem is not None:
            return None, problem
    if not task.service.strip():
        return await _replay_steps_and_collect(kernel, task, steps, None)
    # The replay gets a fresh service of its own, on the host, as the episode had.
    service = await anyio.to_thread.run_sync(TaskService, task)
    bridge = ToolBridge(ToolRegistry())
    try:
        await bridge.attach(
            kernel,
            f"grading-{task.id}",
            timeout_s=budget,
            extra_tools=service.tools,
            exceptions=service.exceptions,
        )
        return await _replay_steps_and_collect(kernel, task, steps, service)
    finally:
        await bridge.aclose()


async def _replay_steps_and_collect(
    kernel: Kernel,
    task: Task,
    steps: Sequence[tuple[str, float]],
    service: TaskService | None,
) -> tuple[Any, str | None]:
    budget = task.limits.grade_timeout_s
    for number, (code, timeout_s) in enumerate(steps, start=1):
        if service is not None:
            service.begin_step()
        outcome = await kernel.execute(code, timeout_s=timeout_s)
        if outcome.kernel_lost:
            return None, f"the kernel died while replaying step {number}; nothing to grade"
    outcome = await kernel.execute(task.collect, timeout_s=budget)
    if outcome.kernel_lost:
        return None, "the kernel died while collecting the answer; nothing to grade"
    if outcome.observation.status is not StepStatus.OK:
        error = outcome.observation.error
        return None, f"collecting the answer failed: {error.text if error else 'no answer'}"
    return await _read_json(kernel, "answer", budget)


async def _run_hidden(kernel: Kernel, code: str, timeout_s: float, name: str) -> str | None:
    """Run task code silently; return what went wrong, or None."""
    if not code.strip():
        return None
    outcome = await kernel.execute(code, timeout_s=timeout_s, silent=True)
    observation = outcome.observation
    if outcome.kernel_lost or observation.status is not StepStatus.OK:
        detail = observation.error.text if observation.error else observation.status.value
        return f"the task's {name} code failed: {detail}"
    return None


async def _read_json(kernel: Kernel, name: str, timeout_s: float) -> tuple[Any, str | None]:
    """The value of variable ``name`` in the kernel, through JSON (never through stdout)."""
    outcome = await kernel.execute(
        f"__import__('json').dumps({name}, allow_nan=False)",
        timeout_s=timeout_s,
        max_output_bytes=_ANSWER_OUTPUT_BYTES,
    )
    observation = outcome.observation
    if outcome.kernel_lost:
        return None, "the kernel died"
    if observation.status is not StepStatus.OK or observation.return_value is None:
        detail = observation.error.evalue if observation.error else "no value"
        return None, f"`{name}` is missing or not JSON data ({detail})"
    try:
        text = ast.literal_eval(observation.return_value)
        if not isinstance(text, str) or len(text) > MAX_ANSWER_CHARS:
            raise ValueError("not a JSON text of acceptable size")
        return json.loads(text), None
    except (ValueError, SyntaxError, RecursionError) as exc:
        return None, f"`{name}` could not be read as JSON ({exc})"
