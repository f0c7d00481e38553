"""The pydantic models of kernelenv: actions, observations and state (OpenEnv coding_env names).

These models are the only schema: the HTTP schema, ``/schema`` and the docs come from them.

Exit-code convention of :class:`CodeObservation` (``exit_code``), chosen so that an agent or a
trainer can tell infrastructure outcomes from ordinary exceptions:

========  ==============  ===========================================================
exit code  status          meaning
========  ==============  ===========================================================
0          ``ok``          the cell ran to the end
1          ``error``       the cell raised an exception (details in ``error``)
2          ``aborted``     the kernel refused to run the cell (queued behind a failure)
124        ``timeout``     the step ran out of time and was interrupted (as ``timeout(1)``)
137        ``kernel_died`` the kernel process died during the step (as a killed process)
========  ==============  ===========================================================
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_ABORTED = 2
EXIT_TIMEOUT = 124
EXIT_KERNEL_DIED = 137


class StepStatus(StrEnum):
    """How a step ended (``str()`` gives the value, e.g. ``ok``)."""

    OK = "ok"
    ERROR = "error"
    ABORTED = "aborted"
    TIMEOUT = "timeout"
    KERNEL_DIED = "kernel_died"

    @property
    def exit_code(self) -> int:
        """The exit code this status maps to (see the module docstring)."""
        return _EXIT_CODES[self]


_EXIT_CODES = {
    StepStatus.OK: EXIT_OK,
    StepStatus.ERROR: EXIT_ERROR,
    StepStatus.ABORTED: EXIT_ABORTED,
    StepStatus.TIMEOUT: EXIT_TIMEOUT,
    StepStatus.KERNEL_DIED: EXIT_KERNEL_DIED,
}


class CodeAction(BaseModel):
    """An action: Python code to run in the episode's kernel."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Python source to execute in the episode's IPython kernel.")
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Wall-clock budget for this step in seconds; None uses the env's default.",
    )
    request_id: str | None = Field(
        default=None,
        max_length=200,
        description="Idempotency key: a repeated id returns the recorded observation "
        "instead of running the code twice.",
    )
    keep: bool = Field(
        default=True,
        description="False: run the code in a throwaway fork of the episode's kernel and "
        "return its observation; the episode's variables, files, step count and history stay "
        "as they were (for trying something before committing to it).",
    )


class ErrorInfo(BaseModel):
    """An exception raised by the agent's code (or a timeout / dead kernel), as plain text."""

    ename: str = Field(description="Exception class name, e.g. 'ZeroDivisionError'.")
    evalue: str = Field(description="Exception message.")
    traceback: list[str] = Field(
        default_factory=list, description="Traceback lines as plain text, ANSI codes removed."
    )

    @property
    def text(self) -> str:
        """The traceback as one string, ending with the exception line."""
        return "\n".join(self.traceback) if self.traceback else f"{self.ename}: {self.evalue}"


class ExecutionResult(BaseModel):
    """Seed 004's view of a step: ``obs.execution_result.stdout`` and friends."""

    stdout: str = Field(description="Text the code printed to stdout.")
    stderr: str = Field(description="Text printed to stderr, including the traceback if any.")
    return_value: str | None = Field(
        description="text/plain of the cell's value (its last expression), or None."
    )
    success: bool = Field(description="True when the step finished with status 'ok'.")
    exception: ErrorInfo | None = Field(default=None, description="The error, if any.")


class CodeObservation(BaseModel):
    """What happened when a step ran: OpenEnv's fields plus everything a notebook shows."""

    model_config = ConfigDict(extra="forbid")

    # OpenEnv coding_env's fields.
    stdout: str = Field(default="", description="Text the code printed to stdout.")
    stderr: str = Field(
        default="",
        description="Text printed to stderr; a failing cell's plain traceback is appended.",
    )
    exit_code: int = Field(
        default=EXIT_OK,
        description="0 ok, 1 exception, 2 aborted, 124 timeout, 137 kernel died.",
    )
    done: bool = Field(default=False, description="True when the episode has ended.")
    reward: float | None = Field(default=None, description="Reward for this step, if any.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Anything else (transforms, tools, timings)."
    )
    # What a notebook shows.
    status: StepStatus = Field(default=StepStatus.OK, description="How the step ended.")
    return_value: str | None = Field(
        default=None, description="text/plain of the execute_result (the last expression)."
    )
    outputs: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The step's outputs as nbformat v4 output dicts (rich MIME bundles included).",
    )
    error: ErrorInfo | None = Field(default=None, description="The exception, if any.")
    execution_count: int | None = Field(
        default=None, description="The kernel's execution counter for this cell."
    )
    duration_s: float = Field(default=0.0, description="Wall-clock time of the step in seconds.")
    kernel_restarted: bool = Field(
        default=False,
        description="True when the episode's earlier state was lost and a fresh kernel took "
        "over for this step (after a dead kernel, or a timeout the interrupt could not stop).",
    )
    output_truncated: bool = Field(
        default=False, description="True when output beyond the byte cap was dropped."
    )
    # Task fields (set when the episode runs a graded task).
    task_id: str | None = Field(default=None, description="Id of the task of this episode.")
    difficulty: str | None = Field(default=None, description="Task difficulty: easy|medium|hard.")
    task_description: str | None = Field(default=None, description="The prompt shown to the agent.")
    task_context: dict[str, Any] = Field(
        default_factory=dict,
        description="The task family's own context (for PR triage: code_snippet, pr_title, ...).",
    )
    previous_feedback: str | None = Field(
        default=None, description="Grader feedback on the previous submission."
    )

    @property
    def success(self) -> bool:
        """True when the step finished with status ``ok``."""
        return self.status is StepStatus.OK

    @property
    def execution_result(self) -> ExecutionResult:
        """Seed 004's view of this observation."""
        return ExecutionResult(
            stdout=self.stdout,
            stderr=self.stderr,
            return_value=self.return_value,
            success=self.success,
            exception=self.error,
        )


class OutputEvent(BaseModel):
    """One output of a running step, delivered as it arrives (``step(..., on_output=...)``).

    Events are a live preview, applied in order as a notebook applies IOPub messages; the
    step's observation, which follows them, is the record. They stop (with a marker event)
    once the step's streamed output reaches ``max_output_bytes``.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["output", "clear_output", "update_display"] = Field(
        description="'output': append `output`; 'clear_output': clear the cell's outputs "
        "(with `wait`, just before the next output arrives); 'update_display': replace the "
        "data of every output displayed with `display_id`."
    )
    output: dict[str, Any] | None = Field(
        default=None,
        description="An nbformat v4 output (stream, display_data, execute_result, error); for "
        "'update_display' a display_data with the new data and metadata.",
    )
    display_id: str | None = Field(
        default=None, description="The display id of a display_data or of an update."
    )
    wait: bool = Field(default=False, description="clear_output's wait flag.")


# What ``step(..., on_output=...)`` takes: a plain function or a coroutine function of an event.
OutputCallback = Callable[[OutputEvent], Awaitable[None] | None]


def observation_summary(observation: CodeObservation) -> str:
    """A step's result as text: what a notebook user would read under the cell.

    For models that read only text (MCP hosts, TRL tool calls, Gymnasium): the status, printed
    output, the error with its traceback, the value, and displayed outputs (their ``text/plain``,
    or a note of the images a plot produced).
    """
    parts = [f"status: {observation.status.value} (exit code {observation.exit_code})"]
    if observation.stdout:
        parts.append(f"stdout:\n{observation.stdout.rstrip()}")
    if observation.stderr:
        parts.append(f"stderr:\n{observation.stderr.rstrip()}")
    error = observation.error
    if error is not None and error.text.strip() not in observation.stderr:
        parts.append(f"error:\n{error.text.rstrip()}")
    if observation.return_value is not None:
        parts.append(f"result: {observation.return_value}")
    for output in observation.outputs:
        if output.get("output_type") != "display_data":
            continue  # streams, the result and errors are shown above
        data = output.get("data") or {}
        images = sorted(kind for kind in data if kind.startswith("image/"))
        text = data.get("text/plain")
        if isinstance(text, list):
            text = "".join(text)
        if images:
            parts.append(f"display: {', '.join(images)} image" + (f" ({text})" if text else ""))
        elif text:
            parts.append(f"display:\n{text.rstrip()}")
    if observation.output_truncated:
        parts.append("(output was truncated)")
    if observation.kernel_restarted:
        parts.append("(the kernel was restarted: earlier variables are gone)")
    return "\n".join(parts)


class CodeState(BaseModel):
    """The episode's state: OpenEnv's fields plus the task fields."""

    episode_id: str | None = Field(default=None, description="Unique id of the episode.")
    step_count: int = Field(default=0, description="Steps taken in this episode.")
    last_exit_code: int = Field(default=EXIT_OK, description="Exit code of the last step.")
    task_id: str | None = Field(default=None, description="Id of the active task, if any.")
    difficulty: str | None = Field(default=None, description="Difficulty of the active task.")
    last_score: float | None = Field(default=None, description="Last grade's score in [0, 1].")
    seed: int | None = Field(default=None, description="The seed given to reset, if any.")


class ReviewAction(BaseModel):
    """An action: a structured code review submitted on a pr_review task."""

    model_config = ConfigDict(extra="forbid")

    review: str = Field(default="", description="Human-readable review: the problem and evidence.")
    file_path: str = Field(default="", description="The changed file being flagged.")
    issue_type: str = Field(
        default="", description="logic | security | performance | maintainability."
    )
    severity: str = Field(default="", description="low | medium | high | critical.")
    bug_type: str = Field(default="", description="syntax | logic | security | none.")
    line_number: int | None = Field(
        default=None, description="Suspected faulty line, in the file after the change."
    )
    confidence: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Confidence in the finding, in [0, 1]."
    )
    request_id: str | None = Field(
        default=None,
        max_length=200,
        description="Idempotency key: a repeated id returns the recorded observation.",
    )


Action = CodeAction | ReviewAction


def parse_action(data: dict[str, Any]) -> CodeAction | ReviewAction:
    """Turn a step payload (the action's fields, as OpenEnv clients send them) into an action.

    The one place where wire payloads become actions: the server, the clients and the
    playground all go through it, so an action kind added here is accepted everywhere.
    A payload with ``code`` is a :class:`CodeAction`; one with review fields and no ``code``
    is a :class:`ReviewAction`.

    Raises:
        pydantic.ValidationError: the payload is not a valid action.
    """
    review_fields = set(ReviewAction.model_fields) - {"request_id"}
    if "code" not in data and review_fields & set(data):
        return ReviewAction.model_validate(data)
    return CodeAction.model_validate(data)


# Observation in, observation out: rewards and filters (see kernelenv.integrations.transforms).
Transform = Callable[[CodeObservation], CodeObservation]


class _Default:
    """Sentinel: "use the env's default", distinct from ``None``."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()


@dataclass
class StepRecord:
    """One step of an episode as it happened (what export and replay work from)."""

    action: CodeAction | ReviewAction
    observation: CodeObservation
    started_at: float
    ended_at: float


def task_text(observation: CodeObservation) -> str:
    """A task's prompt and the context entries it does not already quote."""
    description = observation.task_description or ""
    parts = [description] if description else []
    parts += [
        f"{key}:\n{value}"
        for key, value in observation.task_context.items()
        if value not in (None, "") and str(value) not in description
    ]
    return "\n\n".join(parts)
