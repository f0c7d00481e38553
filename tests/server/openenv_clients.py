"""Drives a kernelenv server with OpenEnv's published clients; run with the `openenv` venv.

Usage: python openenv_clients.py BASE_URL [TOKEN]. The token goes in the ``headers`` that
OpenEnv's ``EnvClient`` sends when it opens the WebSocket. Prints a JSON report of what the clients saw; the
calling test asserts on it. Any exception makes the script fail with a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient
from openenv.core.env_server.types import Action, Observation, State
from openenv.core.generic_client import GenericEnvClient


class CodeAction(Action):
    """OpenEnv coding_env's action."""

    code: str


class CodeObservation(Observation):
    """OpenEnv coding_env's observation: unknown keys are refused (extra="forbid")."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0


class CodeState(State):
    """OpenEnv coding_env's state."""

    last_exit_code: int = 0


class TypedCodingEnv(EnvClient[CodeAction, CodeObservation, CodeState]):
    """A typed client built the way OpenEnv's coding_env client is."""

    def _step_payload(self, action: CodeAction) -> dict[str, Any]:
        return {"code": action.code}

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[CodeObservation]:
        observation = CodeObservation(
            **payload["observation"], reward=payload.get("reward"), done=payload.get("done", False)
        )
        return StepResult(observation=observation, reward=payload.get("reward"),
                          done=payload.get("done", False))

    def _parse_state(self, payload: dict[str, Any]) -> CodeState:
        return CodeState(**payload)


async def drive_generic(base_url: str, headers: dict[str, str] | None) -> dict[str, Any]:
    async with GenericEnvClient(base_url=base_url, headers=headers) as env:
        reset = await env.reset(episode_id="generic-episode", seed=5)
        await env.step({"code": "x = 20"})
        step = await env.step({"code": "print(x * 2)\nx + 1"})
        try:
            await env.step({"code": 12})
            bad = None
        except RuntimeError as exc:  # OpenEnv raises error frames as RuntimeError
            bad = str(exc)
        after_bad = await env.step({"code": "x"})
        state = await env.state()
    return {
        "reset_keys": sorted(reset.observation),
        "stdout": step.observation["stdout"],
        "return_value": step.metadata["kernelenv"]["return_value"],
        "bad": bad,
        "after_bad_return_value": after_bad.observation["metadata"]["kernelenv"]["return_value"],
        "state": state,
    }


def drive_typed(base_url: str, headers: dict[str, str] | None) -> dict[str, Any]:
    with TypedCodingEnv(base_url=base_url, headers=headers).sync() as env:
        env.reset(episode_id="typed-episode")
        env.step(CodeAction(code="import math\nr = 2"))
        step = env.step(CodeAction(code="print(round(math.pi * r * r, 2))"))
        failing = env.step(CodeAction(code="1 / 0"))
        state = env.state()
    return {
        "stdout": step.observation.stdout,
        "exit_code": step.observation.exit_code,
        "failing_exit_code": failing.observation.exit_code,
        "failing_stderr": failing.observation.stderr,
        "state": state.model_dump(),
    }


def main() -> None:
    base_url = sys.argv[1]
    headers = {"Authorization": f"Bearer {sys.argv[2]}"} if len(sys.argv) > 2 else None
    report = {
        "generic": asyncio.run(drive_generic(base_url, headers)),
        "typed": drive_typed(base_url, headers),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
