"""The pydantic models: exit-code convention, seed 004's view, and described schemas."""

from __future__ import annotations

import pydantic
import pytest

from kernelenv import CodeAction, CodeObservation, CodeState, ErrorInfo, StepStatus


def test_each_status_has_its_own_exit_code():
    codes = {status: status.exit_code for status in StepStatus}
    assert codes[StepStatus.OK] == 0
    assert codes[StepStatus.ERROR] == 1
    assert codes[StepStatus.TIMEOUT] == 124
    assert codes[StepStatus.KERNEL_DIED] == 137
    assert len(set(codes.values())) == len(codes)


def test_execution_result_view_of_seed_004():
    obs = CodeObservation(stdout="hi\n", return_value="4.0", status=StepStatus.OK)
    assert obs.execution_result.stdout == "hi\n"
    assert obs.execution_result.return_value == "4.0"
    assert obs.execution_result.success is True
    failed = CodeObservation(status=StepStatus.ERROR, exit_code=1,
                             error=ErrorInfo(ename="E", evalue="v"))
    assert failed.execution_result.success is False
    assert failed.execution_result.exception.ename == "E"


@pytest.mark.parametrize("model", [CodeAction, CodeObservation, CodeState, ErrorInfo])
def test_every_field_is_described(model):
    missing = [name for name, f in model.model_fields.items() if not f.description]
    assert not missing, f"{model.__name__} fields without a description: {missing}"


def test_action_rejects_unknown_fields_and_non_positive_timeouts():
    with pytest.raises(pydantic.ValidationError):
        CodeAction(code="1", cmd="rm")
    with pytest.raises(pydantic.ValidationError):
        CodeAction(code="1", timeout_s=0)
    with pytest.raises(pydantic.ValidationError):
        CodeAction(code=None)


def test_observation_round_trips_through_json():
    obs = CodeObservation(stdout="a", outputs=[{"output_type": "stream", "name": "stdout",
                                               "text": "a"}], status="error", exit_code=1)
    again = CodeObservation.model_validate_json(obs.model_dump_json())
    assert again == obs
    assert again.status is StepStatus.ERROR


def test_status_prints_as_its_value():
    from kernelenv import StepStatus

    assert str(StepStatus.OK) == "ok" and f"{StepStatus.TIMEOUT}" == "timeout"
    assert StepStatus("kernel_died") is StepStatus.KERNEL_DIED
