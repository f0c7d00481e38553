"""The wire format, pure: what OpenEnv's clients see, and our client's lossless way back."""

from __future__ import annotations

import json

from kernelenv.models import CodeObservation, ErrorInfo, StepStatus
from kernelenv.wire import RICH_KEY, observation_from_payload, observation_payload


def rich_observation() -> CodeObservation:
    return CodeObservation(
        stdout="out\n",
        stderr="Traceback ...\n",
        exit_code=1,
        reward=0.5,
        done=True,
        metadata={"episode_id": "e1", "tool_calls": [{"name": "search"}]},
        status=StepStatus.ERROR,
        return_value=None,
        outputs=[{"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}}],
        error=ErrorInfo(ename="ValueError", evalue="bad", traceback=["ValueError: bad"]),
        execution_count=4,
        duration_s=0.25,
        kernel_restarted=True,
        task_id="task_easy_1",
        task_context={"pr_title": "Fix"},
    )


def test_the_wire_observation_has_only_openenv_keys():
    payload = json.loads(json.dumps(observation_payload(rich_observation())))
    assert set(payload["observation"]) == {"stdout", "stderr", "exit_code", "metadata"}
    assert (payload["reward"], payload["done"]) == (0.5, True)
    assert payload["metadata"] == payload["observation"]["metadata"]
    assert payload["metadata"]["episode_id"] == "e1"
    assert payload["metadata"][RICH_KEY]["error"]["ename"] == "ValueError"


def test_round_trip_restores_every_field():
    original = rich_observation()
    payload = json.loads(json.dumps(observation_payload(original)))
    assert observation_from_payload(payload) == original


def test_payloads_without_the_rich_part_and_with_unknown_fields_are_read():
    plain = {"observation": {"stdout": "1\n", "stderr": "", "exit_code": 0}, "reward": None,
             "done": False}
    assert observation_from_payload(plain).stdout == "1\n"
    newer = {"observation": {"stdout": "", "stderr": "", "exit_code": 0,
                             "metadata": {RICH_KEY: {"status": "ok", "field_from_future": 1}}}}
    assert observation_from_payload(newer).status is StepStatus.OK
