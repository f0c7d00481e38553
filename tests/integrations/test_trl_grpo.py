"""TRL's real ``GRPOTrainer`` runs a step with kernelenv's ``environment_factory`` (CPU, offline).

torch and TRL live in their own virtual env, ``.venv-trl`` (gitignored), which ``make test``
builds from the pins in requirements/trl.txt before pytest starts: torch is the CPU build
(2.13.0), so pip never pulls CUDA. The step itself runs in ``trl_grpo_step.py`` there and
reports what happened as JSON.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from peers import peer_python

STEP = Path(__file__).resolve().parent / "trl_grpo_step.py"


@pytest.fixture(scope="module")
def trl_python() -> Path:
    """The interpreter of ``.venv-trl``: torch (CPU), TRL and kernelenv (editable)."""
    return peer_python("trl")


@pytest.mark.slow
def test_grpo_trainer_step_runs_tools_in_kernels_and_gets_rewards(trl_python, tmp_path):
    run = subprocess.run(
        [str(trl_python), str(STEP), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=280, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # The model's tool call reached a kernel: the code ran there and printed from it.
    assert report["steps"] and all("def is_palindrome" in code for code, _ in report["steps"])
    assert report["kernel_pids"] and all(pid.isdigit() for pid in report["kernel_pids"])
    # get_reward graded the task (in fresh kernels) and TRL logged that reward.
    assert report["last_scores"] == [1.0, 1.0]
    step_log = report["log"][0]
    assert step_log["tools/call_frequency"] > 0 and step_log["tools/failure_frequency"] == 0
    assert step_log["reward"] == 1.0
