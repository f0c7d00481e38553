"""The wire format: observations and state as OpenEnv's clients read them, and request bodies.

OpenEnv's typed ``CodingEnv`` client rebuilds an observation with a model that forbids unknown
keys, so the ``observation`` object carries only ``stdout``, ``stderr``, ``exit_code`` and
``metadata`` (``reward`` and ``done`` sit beside it, as OpenEnv serialises them). Every richer
field of :class:`~kernelenv.models.CodeObservation` (status, outputs, error, ...) travels in
``metadata["kernelenv"]``, from where :func:`observation_from_payload` lifts it back.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .models import CodeObservation, CodeState

# Key in ``metadata`` holding the observation's fields that OpenEnv's models do not have.
RICH_KEY = "kernelenv"
# Fields that stay in the wire ``observation`` object (besides ``metadata``).
OPENENV_FIELDS = ("stdout", "stderr", "exit_code")
_TOP_LEVEL = ("reward", "done", "metadata")


class ErrorCode(str, Enum):
    """Codes of WebSocket error frames (OpenEnv's, plus ``PAYLOAD_TOO_LARGE``)."""

    INVALID_JSON = "INVALID_JSON"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    EXECUTION_ERROR = "EXECUTION_ERROR"
    CAPACITY_REACHED = "CAPACITY_REACHED"
    FACTORY_ERROR = "FACTORY_ERROR"
    SESSION_ERROR = "SESSION_ERROR"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"


def observation_payload(
    observation: CodeObservation, *, top_metadata: bool = True
) -> dict[str, Any]:
    """The ``data`` of an observation frame (and the body of HTTP reset/step replies).

    Args:
        observation: The step's observation.
        top_metadata: Also put ``metadata`` beside ``observation``, where OpenEnv's WebSocket
            clients read it into ``StepResult.metadata`` (its frames carry it twice, once in
            ``observation``). HTTP replies, read by hand or by curl, carry it once.
    """
    fields = observation.model_dump(mode="json")
    wire = {name: fields.pop(name) for name in OPENENV_FIELDS}
    reward, done, metadata = (fields.pop(name) for name in _TOP_LEVEL)
    metadata[RICH_KEY] = fields
    wire["metadata"] = metadata
    payload = {"observation": wire, "reward": reward, "done": done}
    if top_metadata:
        # The same object: json.dumps writes it twice, no copy is made here.
        payload["metadata"] = metadata
    return payload


def observation_from_payload(payload: dict[str, Any]) -> CodeObservation:
    """Rebuild the typed observation from an observation frame's ``data``.

    Also accepts payloads of servers that send only OpenEnv's fields (no rich part).
    """
    wire = dict(payload.get("observation") or {})
    metadata = dict(wire.pop("metadata", None) or payload.get("metadata") or {})
    rich = metadata.pop(RICH_KEY, None) or {}
    known = CodeObservation.model_fields  # fields of a newer server are skipped, not refused
    fields = {**{k: v for k, v in rich.items() if k in known}, **wire, "metadata": metadata}
    if "reward" in payload:
        fields["reward"] = payload["reward"]
    if "done" in payload:
        fields["done"] = bool(payload["done"])
    return CodeObservation.model_validate(fields)


def state_payload(state: CodeState) -> dict[str, Any]:
    """The ``data`` of a state frame (and the body of ``GET /state``)."""
    return state.model_dump(mode="json")


def error_payload(message: str, code: ErrorCode, **extra: Any) -> dict[str, Any]:
    """The ``data`` of an error frame."""
    return {"message": message, "code": code.value, **extra}


class ResetRequest(BaseModel):
    """Arguments of a reset (WebSocket ``reset`` data, or the ``POST /reset`` body).

    Keys other than ``seed`` and ``episode_id`` are passed to the env's reset as options
    (e.g. ``task_id``).
    """

    model_config = ConfigDict(extra="allow")

    seed: int | None = Field(default=None, description="Seed for the kernel's random generators.")
    episode_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Id of the new episode (default: a random one). Over HTTP, an id of a live "
        "HTTP episode resets that episode in place.",
    )

    @property
    def options(self) -> dict[str, Any]:
        """The extra keys, passed to the env's reset."""
        return dict(self.model_extra or {})


class StepRequest(BaseModel):
    """The body of ``POST /step``."""

    model_config = ConfigDict(extra="forbid")

    action: dict[str, Any] = Field(description="The action's fields, e.g. {'code': 'print(1)'}.")
    episode_id: str = Field(description="The episode to step, as returned by /reset.")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Wall-clock budget of this step in seconds."
    )
    request_id: str | None = Field(
        default=None,
        max_length=200,
        description="Idempotency key: a retry with the same id returns the recorded observation.",
    )


class ObservationReply(BaseModel):
    """An observation as sent on the wire (documents the replies of /reset and /step)."""

    observation: dict[str, Any] = Field(
        description="stdout, stderr, exit_code and metadata (rich fields in metadata.kernelenv)."
    )
    reward: float | None = Field(default=None, description="Reward of this step, if any.")
    done: bool = Field(default=False, description="True when the episode has ended.")
    episode_id: str | None = Field(
        default=None, description="The episode this observation belongs to (HTTP replies)."
    )


class ForkRequest(BaseModel):
    """Arguments of a live fork (``POST /fork`` body; WebSocket ``fork`` data without the id)."""

    model_config = ConfigDict(extra="forbid")

    episode_id: str | None = Field(
        default=None, description="The episode to fork (HTTP; a WebSocket forks its own)."
    )
    n: int = Field(default=1, ge=1, le=16, description="How many children to make.")


class ForkReply(BaseModel):
    """The children of a live fork, each an HTTP episode of its own (step it by its id)."""

    episode_ids: list[str] = Field(description="The children's episode ids, in order.")
