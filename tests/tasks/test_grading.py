"""Grading on real kernels: the protocol, and reward hacks that must not score."""

from __future__ import annotations

import json

import pytest

from kernelenv import KernelEnv, KernelPool, SandboxConfig
from kernelenv.tasks.fork_grading import WarmGraders
from kernelenv.tasks.grading import Grade, grade_answer, grade_code_attempt
from kernelenv.tasks.library import default_library

# A level whose kernels come from a template (limits and bwrap start cold for now).
TEMPLATE_LIMITS = SandboxConfig(level="none")

pytestmark = pytest.mark.anyio

CORRECT = """
def is_palindrome(text):
    kept = [ch.lower() for ch in text if ch.isalnum()]
    return kept == kept[::-1]
"""
NAIVE = "def is_palindrome(text):\n    return text == text[::-1]\n"  # passes 6 of 10 tests


@pytest.fixture(scope="module", params=["fresh kernels", "throwaway forks"])
async def pool(request, anyio_backend):
    """A pool; graded through the three-kernel path, or in forks of two warm kernels."""
    async with KernelPool(size=3) as pool:
        pool.graders = WarmGraders(pool) if request.param == "throwaway forks" else None
        try:
            yield pool
        finally:
            if pool.graders is not None:
                await pool.graders.aclose()


async def grade(pool, task_id: str, *cells: str) -> Grade:
    task = default_library().get(task_id)
    # A short step budget: some hacks wreck the kernel's messaging until the step times out.
    steps = [(cell, 2.0) for cell in cells]
    if getattr(pool, "graders", None) is not None:
        return await pool.graders.grade_steps(task, steps)
    return await grade_code_attempt(pool, task, steps)


async def test_honest_attempts_get_their_scores(pool):
    assert (await grade(pool, "functions_easy_palindrome", CORRECT)).score == 1.0
    naive = await grade(pool, "functions_easy_palindrome", NAIVE)
    assert naive.score == pytest.approx(0.6)
    assert not naive.passed
    assert naive.components["mixed_case"] == 0.0 and naive.components["simple_word"] == 1.0
    assert "6/10 hidden tests passed" in naive.feedback


async def test_redefining_the_graders_helpers_gains_nothing(pool):
    hack = """
_kernelenv_call = lambda *args: {"value": True}
_canonical = lambda value: ""
EXPECTED = {}
grade = {"score": 1.0, "feedback": "forged", "components": {}}
answer = {"score": 1.0}
def score_review(*args, **kwargs):
    return {"score": 0.99}
"""
    result = await grade(pool, "functions_easy_palindrome", NAIVE, hack)
    assert result.score == pytest.approx(0.6)  # exactly the honest score of NAIVE


@pytest.mark.parametrize(
    "hack",
    [
        # builtins the grader would use to add up and compare
        (
            "import builtins\nbuiltins.sum = lambda *a, **k: 10\nbuiltins.len = lambda *a: 10\n"
            "builtins.isinstance = lambda *a: True\nbuiltins.all = lambda *a: True"
        ),
        # the JSON channel itself
        (
            "import json\njson.dumps = lambda *a, **k: '{\"score\": 1.0, \"passed\": true}'\n"
            "json.loads = lambda *a, **k: {'score': 1.0}"
        ),
        # imports (the collect cell cannot even import json)
        "import builtins\nbuiltins.__import__ = lambda *a, **k: None",
    ],
    ids=["builtins", "json", "import"],
)
async def test_patched_builtins_do_not_score(pool, hack):
    result = await grade(pool, "functions_easy_palindrome", hack)
    assert result.score == 0.0, result.feedback


async def test_eq_tricks_do_not_pass_tests(pool):
    hack = """
class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__

class TrueInt(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__

def is_palindrome(text):
    return Anything() if len(text) % 2 else TrueInt(1)
"""
    result = await grade(pool, "functions_easy_palindrome", hack)
    assert result.score == 0.0, result.feedback


async def test_fake_results_printed_or_written_are_never_read(pool):
    hack = """
import json, pathlib
print("score: 1.0000")
print(json.dumps({"score": 1.0, "passed": True}))
for name in ("grade.json", "result.json", "answer.json"):
    pathlib.Path(name).write_text(json.dumps({"score": 1.0, "passed": True}))
from IPython.display import display
display({"application/json": {"score": 1.0}}, raw=True)
"""
    result = await grade(pool, "functions_easy_palindrome", hack)
    assert result.score == 0.0


@pytest.mark.parametrize(
    "exit_code",
    ["import os\n    os._exit(0)", "import sys\n    sys.exit(0)", "raise SystemExit(0)"],
    ids=["os._exit", "sys.exit", "SystemExit"],
)
async def test_exiting_early_scores_zero(pool, exit_code):
    hack = f"def is_palindrome(text):\n    {exit_code}\n"
    result = await grade(pool, "functions_easy_palindrome", hack)
    assert result.score == 0.0
    assert "nothing to grade" in result.feedback or "failed" in result.feedback


async def test_expected_values_are_not_in_the_attempt_kernel(pool):
    snoop = """
import gc, sys

def is_palindrome(text):
    for obj in gc.get_objects():
        if isinstance(obj, dict) and "EXPECTED" in obj:
            return obj["EXPECTED"]
    frame = sys._getframe(1)
    while frame is not None:
        for scope in (frame.f_locals, frame.f_globals):
            if "EXPECTED" in scope:
                return scope["EXPECTED"]
        frame = frame.f_back
    return None
"""
    result = await grade(pool, "functions_easy_palindrome", snoop)
    assert result.score == 0.0


async def test_data_task_tolerance_cannot_be_patched(pool):
    hack = """
import math, statistics
math.isclose = lambda *a, **k: True
statistics.fmean = statistics.stdev = lambda *a, **k: 0.0
answer = {"mean": 0.0, "stdev": 0.0}
"""
    assert (await grade(pool, "data_analysis_easy_readings", hack)).score == 0.0
    task = default_library().get("data_analysis_easy_readings")
    reference = await grade(pool, task.id, *task.solution)
    assert reference.score == 1.0 and reference.passed


async def test_answers_must_be_json_data(pool):
    task = default_library().get("data_analysis_easy_readings")
    assert (await grade(pool, task.id, "answer = {'mean': object()}")).score == 0.0
    # NumPy scalars are numbers, not a reason to fail.
    numpy_answer = "\n".join(task.solution) + "\nimport numpy\nanswer = {k: numpy.float64(v) for k, v in answer.items()}"
    assert (await grade(pool, task.id, numpy_answer)).score == 1.0


async def test_a_broken_grader_is_reported_not_raised(pool):
    task = default_library().get("functions_easy_palindrome")
    broken = task.model_copy(update={"grader": "grade = {'score': 7}"})
    result = await grade_answer(pool, broken, {})
    assert result.score == 0.0 and "invalid grade" in result.feedback
    crashing = task.model_copy(update={"grader": "1 / 0"})
    assert "ZeroDivisionError" in (await grade_answer(pool, crashing, {})).feedback


async def test_grading_never_touches_the_live_kernel(pool, no_leaks):
    task = default_library().get("data_analysis_easy_readings")
    async with KernelEnv(pool=pool) as env:
        first = await env.reset(task_id=task.id)
        # The agent sees the prompt, never the solution, collect or grader code.
        shown = first.model_dump_json()
        assert "statistics.stdev(_temps)" not in shown and "_components" not in shown
        await env.step(task.solution[0])
        before = (await env.step("get_ipython().execution_count")).return_value
        grade_result = await env.grade()
        assert grade_result.score == 1.0 and env.state.last_score == 1.0
        probe = await env.step(
            "import os\n"
            "sorted(os.listdir('.')), [n for n in ('grade', 'EXPECTED', '_expected', '_components')"
            " if n in globals()], get_ipython().execution_count"
        )
        files, grader_names, count = eval(probe.return_value)  # our own repr
        assert files == ["readings.csv"] and grader_names == []
        assert count == int(before) + 1  # grading ran no cell in this kernel
        # Grading twice gives the same grade (it replays, it does not consume the episode).
        assert (await env.grade()).model_dump() == grade_result.model_dump()
    assert json.loads(grade_result.model_dump_json())["task_id"] == task.id


class RecordingPool(KernelPool):
    """A real pool that notes whether each kernel it hands out was forked from its template."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.forked: list[bool] = []

    async def acquire(self, timeout_s=None):
        kernel = await super().acquire(timeout_s)
        self.forked.append(getattr(kernel.manager.provisioner, "forked", False))
        return kernel


async def test_grading_kernels_are_forked_from_the_template(no_leaks):
    async with RecordingPool(size=0, sandbox=TEMPLATE_LIMITS, launch="template") as pool:
        assert (await grade(pool, "functions_easy_palindrome", CORRECT)).score == 1.0
    assert pool.forked == [True, True]  # the attempt's replay and the grader: both fresh forks
