"""HTTP routes: ``/reset``, ``/step``, ``/state`` on live episodes named by episode_id, plus
``/health``, ``/schema``, ``/metadata`` and ``/close``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field, TypeAdapter

from .. import __version__
from ..errors import InvalidActionError
from ..models import Action, CodeObservation, CodeState, parse_action
from ..wire import (
    ForkReply,
    ForkRequest,
    ObservationReply,
    ResetRequest,
    StepRequest,
    observation_payload,
    state_payload,
)
from .deps import Sessions

router = APIRouter(tags=["environment"])

DESCRIPTION = (
    "A code-execution environment for LLM agents: each episode runs Python in its own "
    "IPython kernel, with OpenEnv coding_env's API."
)


class HealthReply(BaseModel):
    """The server's health and load."""

    status: str = Field(description="'healthy' while the server serves requests.")
    active_sessions: int = Field(description="Sessions open now (WebSocket plus HTTP).")
    max_sessions: int = Field(description="The session limit.")
    ready_kernels: int = Field(description="Kernels started in advance and waiting for a reset.")


class CloseRequest(BaseModel):
    """The body of ``POST /close``."""

    episode_id: str = Field(description="The HTTP episode to end.")


@router.get("/health", response_model=HealthReply, summary="Health check (no token needed)")
async def health(sessions: Sessions) -> HealthReply:
    """Answer at once, also while every session runs a long cell."""
    return HealthReply(
        status="healthy",
        active_sessions=sessions.active_count,
        max_sessions=sessions.max_sessions,
        ready_kernels=sessions.pool.ready_count,
    )


@router.post("/reset", response_model=ObservationReply, summary="Start (or restart) an episode")
async def reset(
    sessions: Sessions, request: Annotated[ResetRequest | None, Body()] = None
) -> dict[str, Any]:
    """Start an episode on a fresh kernel; it stays alive for ``/step`` and ``/state``.

    An ``episode_id`` naming a live HTTP episode resets that episode in place.
    """
    request = request or ResetRequest()
    session, observation = await sessions.reset_http(
        seed=request.seed, episode_id=request.episode_id, **request.options
    )
    reply = observation_payload(observation, top_metadata=False)
    return {**reply, "episode_id": session.episode_id}


@router.post("/step", response_model=ObservationReply, summary="Run code in an episode")
async def step(sessions: Sessions, request: StepRequest) -> dict[str, Any]:
    """Run the action in the episode named by ``episode_id``.

    ``request_id`` (here or in the action) makes retries safe: a repeated id returns the
    recorded observation without running the code again.
    """
    session = sessions.get(request.episode_id)
    sessions.check_http(session)
    fields = dict(request.action)
    if request.request_id is not None:
        fields.setdefault("request_id", request.request_id)
    action = parse_action(fields)
    with sessions.using(session):
        observation = await session.env.step(action, timeout_s=request.timeout_s)
    reply = observation_payload(observation, top_metadata=False)
    return {**reply, "episode_id": session.episode_id}


@router.post("/fork", response_model=ForkReply, summary="Branch a live episode")
async def fork(sessions: Sessions, request: ForkRequest) -> ForkReply:
    """Fork the episode ``n`` times: each child holds its state now (variables, imports,
    files) and is an HTTP episode of its own; the episode itself goes on unchanged."""
    if request.episode_id is None:
        raise InvalidActionError("POST /fork needs the episode_id of the episode to fork")
    session = sessions.get(request.episode_id)
    sessions.check_http(session)
    sessions.check_room(request.n)
    with sessions.using(session):
        children = await session.env.fork(request.n)
    return ForkReply(episode_ids=[child.state.episode_id for child in children])


@router.get("/state", response_model=CodeState, summary="An episode's state")
async def state(
    sessions: Sessions,
    episode_id: Annotated[str, Query(description="The episode, as returned by /reset.")],
) -> dict[str, Any]:
    """The state (episode_id, step_count, last_exit_code, ...) of a live episode."""
    session = sessions.get(episode_id)
    with sessions.using(session):
        return state_payload(session.env.state)


@router.post("/close", summary="End an HTTP episode now")
async def close(sessions: Sessions, request: CloseRequest) -> dict[str, str]:
    """Release the episode's kernel without waiting for the idle timeout."""
    session = sessions.get(request.episode_id)
    sessions.check_http(session)
    await sessions.close(session)
    return {"closed": request.episode_id}


@router.get("/schema", summary="JSON Schemas of action, observation and state")
async def schema() -> dict[str, Any]:
    """The JSON Schemas of the actions, :class:`CodeObservation` and :class:`CodeState`."""
    return {
        "action": TypeAdapter(Action).json_schema(),
        "observation": CodeObservation.model_json_schema(),
        "state": CodeState.model_json_schema(),
    }


@router.get("/metadata", summary="What this environment is")
async def metadata() -> dict[str, Any]:
    """Name, description and version of the environment."""
    return {"name": "kernelenv", "description": DESCRIPTION, "version": __version__}
