"""Transforms: rewards from what a step did (canned observations) and from real kernel steps."""

from __future__ import annotations

import pytest

from kernelenv import (
    CodeAction,
    CodeObservation,
    CodeQualityTransform,
    CodeSafetyTransform,
    CompositeTransform,
    ErrorInfo,
    KernelEnv,
    MathProblemTransform,
    StepStatus,
    Transform,
    create_math_env_transform,
    create_safe_env_transform,
)
from kernelenv.integrations.transforms import find_unsafe_patterns


def observed(code: str, **fields) -> CodeObservation:
    """An observation as the env hands it to transforms (the code in metadata)."""
    return CodeObservation(metadata={"last_code": code}, **fields)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import os\nos.system('rm -rf /')", ["os.system"]),
        ("from os import system as run\nrun('ls')", ["os.system"]),
        ("import subprocess as sp\nsp.run(['ls'])", ["import subprocess", "subprocess.run"]),
        ("import shutil; shutil.rmtree('/data')", ["shutil.rmtree"]),
        ("eval(input())", ["eval"]),
        ("!rm -rf /tmp/x", ["shell escape !"]),
        ("%%bash\nrm -rf /", ["shell escape %%bash"]),
    ],
)
def test_unsafe_patterns_are_found(code, expected):
    assert find_unsafe_patterns(code) == expected


@pytest.mark.parametrize(
    "code",
    [
        "print('os.system is dangerous')  # eval(x) in a comment",
        "result = evaluate(3)\nsystem = 'linux'",
        "import math\nmath.sqrt(16)",
    ],
)
def test_safe_code_is_not_flagged(code):
    assert find_unsafe_patterns(code) == []


def test_safety_penalty_and_record():
    transform = CodeSafetyTransform(penalty=-2.0)
    unsafe = transform(observed("import os; os.remove('x')"))
    assert unsafe.reward == -2.0
    assert unsafe.metadata["safety_violations"] == ["os.remove"]
    assert unsafe.metadata["rewards"] == {"safety": -2.0}
    safe = transform(observed("1 + 1", return_value="2"))
    assert safe.reward == 0.0
    assert "safety_violations" not in safe.metadata


def test_math_uses_the_actual_result_not_the_code():
    transform = MathProblemTransform(expected_answer=42)
    # The code mentions 42, but what it produced is 41.
    wrong = transform(observed("x = 42\nx - 1", return_value="41"))
    assert wrong.reward == 0.0 and wrong.metadata["answer_correct"] is False
    printed = transform(observed("print(6 * 7)", stdout="the answer is\n42\n"))
    assert printed.reward == 1.0 and printed.metadata["answer"] == "42"
    numpy_style = transform(observed("np.float64(42.0)", return_value="np.float64(42.0)"))
    assert numpy_style.reward == 1.0


def test_math_gives_nothing_for_a_failed_step():
    error = ErrorInfo(ename="ZeroDivisionError", evalue="division by zero")
    failed = MathProblemTransform(expected_answer=42)(
        observed("print(42); 1/0", stdout="42\n", status=StepStatus.ERROR, exit_code=1,
                 error=error)
    )
    assert failed.reward == 0.0
    assert failed.metadata["answer"] is None


def test_math_text_answers_and_tolerance():
    assert MathProblemTransform("paris")(observed("c", return_value="'paris'")).reward == 1.0
    close = MathProblemTransform(0.3, abs_tol=1e-6)
    assert close(observed("0.1 + 0.2", return_value="0.30000000000000004")).reward == 1.0


def test_quality_bonuses_and_penalty():
    quality = CodeQualityTransform()
    clean = quality(observed("21 * 2", return_value="42"))
    assert clean.reward == pytest.approx(quality.max_bonus)
    noisy = quality(observed("import warnings; warnings.warn('x')", stderr="UserWarning: x"))
    assert noisy.reward == pytest.approx(quality.concise_bonus)
    long_failing = quality(
        observed("\n".join(f"x{i} = {i}" for i in range(30)) + "\n1/0",
                 status=StepStatus.ERROR, exit_code=1)
    )
    assert long_failing.reward == pytest.approx(quality.error_penalty)


def test_composite_adds_rewards_in_order_and_keeps_parts():
    calls = []

    class Recorder(Transform):
        name = "recorder"

        def __call__(self, observation):
            calls.append(observation.reward)
            return observation

    composite = CompositeTransform([MathProblemTransform(4), Recorder(), CodeQualityTransform()])
    result = composite(observed("2 + 2", return_value="4"))
    assert calls == [1.0]
    assert result.reward == pytest.approx(1.2)
    assert result.metadata["rewards"] == {"math": 1.0, "quality": pytest.approx(0.2)}


def test_factories_compose_the_seed_transforms():
    math = create_math_env_transform(expected_answer=42)
    assert [type(t) for t in math.transforms] == [
        CodeSafetyTransform, MathProblemTransform, CodeQualityTransform
    ]
    assert math.transforms[1].expected_answer == 42
    safe = create_safe_env_transform()
    assert [type(t) for t in safe.transforms] == [CodeSafetyTransform, CodeQualityTransform]
    unsafe = safe(observed("import os; os.system('ls')"))
    assert unsafe.reward == pytest.approx(-1.0 + 0.2)


@pytest.mark.anyio
async def test_env_rewards_what_the_kernel_actually_did(shared_pool):
    async with KernelEnv(pool=shared_pool, transform=create_math_env_transform(42)) as env:
        await env.reset()
        # Same text, different outcomes: the state of the kernel decides.
        await env.step("n = 21")
        right = await env.step(CodeAction(code="n * 2"))
        await env.step("n = 20")
        wrong = await env.step(CodeAction(code="n * 2"))
        crashed = await env.step(CodeAction(code="print(42); raise SystemError('boom')"))
    assert right.reward == pytest.approx(1.2)
    assert right.metadata["last_code"] == "n * 2"
    assert wrong.reward == pytest.approx(0.2)
    assert wrong.metadata["answer"] == "40"
    assert crashed.reward == pytest.approx(-0.1 + 0.1)  # error penalty, concise bonus
    assert crashed.metadata["rewards"]["math"] == 0.0


@pytest.mark.anyio
async def test_env_without_transform_adds_no_reward(shared_pool):
    async with KernelEnv(pool=shared_pool) as env:
        await env.reset()
        observation = await env.step("21 * 2")
    assert observation.reward is None
    assert "last_code" not in observation.metadata
